"""The HTML evaluation report, generated from real ml-100k evaluations through the command
line and read back: the embedded chart data must equal the results JSON's numbers, the file
must open without a network, and broken inputs must fail with one clear line."""

from __future__ import annotations

import json
import re
import shutil
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from llmrecall.cli import app
from llmrecall.evaluate.ranks import load_ranks, popularity_buckets, sidecar_path, target_ranks
from llmrecall.evaluate.report_html import Run, complementarity, overlap

#: a second, quick pipeline for the cold-items evaluation
COLD = """
[fusion]
k = 200
channel_k = 200
[[channels]]
kind = "popularity"
[[channels]]
kind = "itemcf"
"""

FIGURE = re.compile(r'<script type="application/json" class="figure" data-name="([^"]+)"[^>]*>'
                    r"(.*?)</script>", re.S)


def _run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _figures(path) -> dict[str, dict]:
    text = path.read_text(encoding="utf-8")
    return {name: json.loads(body) for name, body in FIGURE.findall(text)}


def _trace(figure: dict, name: str) -> dict:
    found = [t for t in figure["data"] if t.get("name") == name]
    assert len(found) == 1, [t.get("name") for t in figure["data"]]
    return found[0]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Two evaluations written by `llmrecall evaluate`: the default config under loo (with
    --report) and a quick config under cold-items."""
    folder = tmp_path_factory.mktemp("report")
    default = folder / "default.json"
    result = _run("evaluate", "-d", "ml-100k", "-c", "default", "-o", default,
                  "--report", folder / "one.html")
    assert result.exit_code == 0, result.output
    cold_cfg = folder / "cold.toml"
    cold_cfg.write_text(COLD)
    cold = folder / "cold.json"
    result = _run("evaluate", "-d", "ml-100k", "-c", cold_cfg, "--protocol", "cold-items",
                  "-o", cold)
    assert result.exit_code == 0, result.output
    return folder, default, cold


@pytest.mark.slow  # evaluates ml-100k
def test_evaluate_writes_the_json_as_before_and_a_sidecar_beside_it(evaluated):
    folder, default, _cold = evaluated
    report = json.loads(default.read_text())
    # the JSON keeps exactly its keys: the report's data lives in the sidecar (the packaged
    # default fuses by the learned fusion, whose guard's choice is its "fusion" entry)
    assert set(report) == {"dataset", "protocol", "seed", "split", "config_hash",
                           "users_evaluated", "results", "timings", "fusion"}
    assert report["fusion"]["validation_users"] == report["users_evaluated"] == 943
    assert sidecar_path(default) == folder / "default.ranks.npz"
    meta, arrays = load_ranks(sidecar_path(default))
    assert meta["lists"] == [*report["results"]]  # channels in order, then fused
    users = report["users_evaluated"]
    assert arrays["users"].shape == (users,) and arrays["history_length"].shape == (users,)
    assert arrays["target_indptr"][-1] == len(arrays["target_items"]) == users  # loo: one each
    for name in meta["lists"]:
        rank = arrays[f"rank.{name}"]
        assert rank.min() >= -1 and rank.max() <= meta["list_lengths"][name]
        hits_at_50 = ((rank >= 1) & (rank <= 50)).mean()  # one target per user: = recall@50
        assert hits_at_50 == pytest.approx(report["results"][name]["recall@50"], abs=1e-12)
    assert sidecar_path(default).stat().st_size < 100_000  # compact


@pytest.mark.slow  # evaluates ml-100k
def test_curves_equal_the_results_json_at_every_reported_k(evaluated):
    folder, default, _cold = evaluated
    report = json.loads(default.read_text())
    figures = _figures(folder / "one.html")
    for metric in ("recall", "ndcg"):
        figure = figures[f"{metric}-curves"]
        for name, metrics in report["results"].items():
            trace = _trace(figure, f"default · {name}")
            assert trace["x"][:3] == [1, 2, 3] and len(trace["x"]) == 200
            for k in (10, 20, 50, 100, 200):
                # same float operations as the JSON's metrics: equal, not just close
                assert trace["y"][k - 1] == metrics[f"{metric}@{k}"], (name, metric, k)
    fused = _trace(figures["recall-curves"], "default · fused")
    assert fused["y"][49] == report["results"]["fused"]["recall@50"]
    # the results JSON's own points are drawn, and lie on the curve
    dots = _trace(figures["recall-curves"], "default · fused (results JSON)")
    assert dots["x"] == [10, 20, 50, 100, 200]
    assert dots["y"] == [fused["y"][k - 1] for k in dots["x"]]
    assert fused["y"] == sorted(fused["y"])  # recall@K never falls as K grows


@pytest.mark.slow  # evaluates ml-100k
def test_segments_partition_the_users_and_targets(evaluated):
    folder, default, _cold = evaluated
    report = json.loads(default.read_text())
    figures = _figures(folder / "one.html")
    want = report["results"]["fused"]["recall@50"]
    for name in ("recall-by-history", "recall-by-recency", "recall-by-popularity"):
        trace = _trace(figures[name], "default · fused")
        sizes = np.array(trace["customdata"])
        assert sizes.sum() == report["users_evaluated"], name  # loo: one target per user
        assert len(trace["x"]) >= 2, (name, trace["x"])
        # the segments' recall, weighted by their sizes, is the overall recall
        assert float(np.dot(trace["y"], sizes) / sizes.sum()) == pytest.approx(want, abs=1e-12)
    popularity = _trace(figures["recall-by-popularity"], "default · fused")
    assert popularity["x"] == ["head", "torso", "tail"]


@pytest.mark.slow  # evaluates ml-100k
def test_coverage_and_timings_are_the_json_s(evaluated):
    folder, default, _cold = evaluated
    report = json.loads(default.read_text())
    figures = _figures(folder / "one.html")
    coverage = _trace(figures["coverage"], "default · fused")
    assert coverage["y"] == [report["results"]["fused"][f"coverage@{k}"] for k in coverage["x"]]
    fit = _trace(figures["timings"], "default · fit")
    assert dict(zip(fit["x"], fit["y"])) == report["timings"]["fit_seconds"]
    bias = figures["popularity-bias"]
    head = [t for t in bias["data"] if t["name"] == "head"][0]
    shares = np.array([t["y"] for t in bias["data"]])  # [bucket, bar]
    assert np.allclose(shares.sum(axis=0), 1.0)
    assert "default · fused@50" in head["x"]


@pytest.mark.slow  # evaluates ml-100k
def test_report_opens_without_a_network(evaluated):
    folder, _default, _cold = evaluated
    text = (folder / "one.html").read_text(encoding="utf-8")
    # no element loads anything from elsewhere: plotly.js is inline
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=", text, re.I)
    assert text.count("plotly.js v") >= 1 and "Plotly.newPlot" in text
    assert len(_figures(folder / "one.html")) >= 9


@pytest.mark.slow  # evaluates ml-100k
def test_two_results_files_give_two_labelled_series(evaluated, tmp_path):
    _folder, default, cold = evaluated
    out = tmp_path / "both.html"
    result = _run("report", default, cold, "--out", out, "--label", "classic",
                  "--label", "new items")
    assert result.exit_code == 0, result.output
    figures = _figures(out)
    curves = figures["recall-curves"]
    runs = {t["meta"]["run"] for t in curves["data"]}
    assert runs == {"classic", "new items"}
    cold_report = json.loads(cold.read_text())
    assert _trace(curves, "new items · fused")["y"][49] == cold_report["results"]["fused"]["recall@50"]
    assert _trace(curves, "new items · itemcf")["y"][9] == cold_report["results"]["itemcf"]["recall@10"]
    # cold-items: every target is new, so only the "cold" bar, for that file only
    cold_vs_warm = figures["cold-vs-warm"]
    assert _trace(cold_vs_warm, "new items · fused")["x"] == ["cold"]
    # loo: a few targets were never seen in train (their one interaction is the held-out one)
    classic = _trace(cold_vs_warm, "classic · fused")
    _meta, arrays = load_ranks(sidecar_path(default))
    n_cold = int(arrays["target_cold"].sum())
    assert 0 < n_cold < len(arrays["target_cold"])
    assert classic["x"] == ["cold", "warm"] and classic["customdata"][0] == n_cold
    # one overlap heatmap per file
    heatmaps = [f for name, f in figures.items() if name.startswith("overlap-")]
    assert sorted(f["data"][0]["meta"]["run"] for f in heatmaps) == ["classic", "new items"]
    # file names label the series by default
    result = _run("report", default, cold, "--out", out)
    assert result.exit_code == 0, result.output
    assert {t["meta"]["run"] for t in _figures(out)["recall-curves"]["data"]} == {"default", "cold"}


@pytest.mark.slow  # evaluates ml-100k
def test_broken_inputs_fail_with_one_clear_line(evaluated, tmp_path):
    _folder, default, cold = evaluated
    out = tmp_path / "r.html"

    def fails(*paths, says):
        result = _run("report", *paths, "--out", out)
        assert result.exit_code == 2, result.output
        assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
        assert says in result.output, result.output
        assert not out.exists()

    fails(tmp_path / "nope.json", says="results file not found")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    fails(bad, says="not a results JSON")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"best": 1}))
    fails(other, says="not a results file")
    lonely = tmp_path / "lonely.json"
    shutil.copy(default, lonely)
    fails(lonely, says="ranks file is missing")
    # a sidecar of another evaluation is caught by its numbers
    shutil.copy(sidecar_path(cold), sidecar_path(lonely))
    fails(lonely, says="belongs to another evaluation")
    sidecar_path(lonely).write_bytes(b"garbage")
    fails(lonely, says="not a ranks file")


@pytest.mark.slow  # evaluates ml-100k
def test_without_plotly_both_commands_say_what_to_install_before_any_work(evaluated, tmp_path,
                                                                         monkeypatch):
    _folder, default, _cold = evaluated
    monkeypatch.setitem(sys.modules, "plotly", None)  # import plotly raises ImportError
    out = tmp_path / "r.html"
    for args in (("report", default, "--out", out),
                 ("evaluate", "-d", "ml-100k", "-c", "default", "--report", out)):
        result = _run(*args)
        assert result.exit_code == 2, result.output
        assert "pip install 'llmrecall[report]'" in result.output
        assert "fitted" not in result.output and not out.exists()


@pytest.mark.slow  # evaluates ml-100k
def test_evaluate_report_alone_writes_only_the_html(tmp_path):
    cfg = tmp_path / "quick.toml"
    cfg.write_text(COLD)
    out = tmp_path / "sub" / "only.html"
    result = _run("evaluate", "-d", "ml-100k", "-c", cfg, "--report", out)
    assert result.exit_code == 0, result.output
    assert out.is_file() and sorted(p.name for p in out.parent.iterdir()) == ["only.html"]
    assert _trace(_figures(out)["recall-curves"], "ml-100k loo · fused")


# ---- the pieces, on small hand-made inputs ---------------------------------------------------

def test_target_ranks_finds_each_target_in_its_own_row():
    ids = np.array([[5, 2, -1], [1, 0, 3], [4, -1, -1]], np.int32)
    targets = sp.csr_matrix(np.array([[0, 0, 1, 0, 0, 1],   # 2 at rank 2, 5 at rank 1
                                      [0, 0, 1, 0, 0, 0],   # 2 not in the list
                                      [1, 0, 0, 0, 1, 0]],  # 0 absent (other row has it), 4 first
                                     np.float32))
    assert target_ranks(ids, targets).tolist() == [2, 1, -1, -1, 1]


def test_popularity_buckets_split_the_interactions_in_thirds():
    counts = np.array([0, 50, 10, 20, 5, 15])  # total 100
    # by popularity: 1 (before 0) head; 3 (before 50) torso; 5 (before 70) tail, ...
    assert popularity_buckets(counts).tolist() == [2, 0, 2, 1, 2, 2]


def _tiny_run(ranks: dict[str, list[int]]) -> Run:
    names = [*ranks, "fused"]
    n = len(next(iter(ranks.values())))
    arrays = {f"rank.{k}": np.array(v, np.int32) for k, v in ranks.items()}
    return Run("t", {}, {"lists": names, "list_lengths": dict.fromkeys(names, 10)},
               {**arrays, "target_indptr": np.arange(n + 1)})


def test_complementarity_counts_fused_hits_only_one_channel_holds():
    run = _tiny_run({"a": [1, 5, -1, 2, -1], "b": [-1, 3, 4, -1, -1],
                     "fused": [1, 2, 3, 9, -1]})
    # fused top 3 hits: targets 0 (a only), 1 (a and b), 2 (b only); target 3 is below 3
    assert complementarity(run, 3) == {"a": 1, "b": 1, "fused hits": 3}
    # within the channels' own top 3: target 1 is b's alone (a ranks it 5th), 2 is nobody's
    assert complementarity(run, 3, within=3) == {"a": 1, "b": 1, "fused hits": 3}
    assert complementarity(run, 3, within=1) == {"a": 1, "b": 0, "fused hits": 3}
    names, jaccard, shared = overlap(run, 5)
    # a's hits@5: {0, 1, 3}; b's: {1, 2}
    assert names == ["a", "b"] and shared == [[3, 1], [1, 2]]
    assert jaccard[0][1] == pytest.approx(1 / 4)


@pytest.mark.slow  # runs the main job on ml-100k
def test_the_demo_results_feed_the_report(tmp_path):
    """`llmrecall demo` (the main job) writes the ranks beside its JSON, so its results are
    drawn like evaluate's (it used to write the JSON alone, which `report` refused)."""
    output = tmp_path / "demo.json"
    result = _run("demo", "-c", "default", "-o", output)
    assert result.exit_code == 0, result.output
    assert sidecar_path(output).exists()
    result = _run("report", output, "--out", tmp_path / "demo.html")
    assert result.exit_code == 0, result.output
    report = json.loads(output.read_text())
    fused = _trace(_figures(tmp_path / "demo.html")["recall-curves"], "demo · fused")
    assert fused["y"][49] == report["results"]["fused"]["recall@50"]
