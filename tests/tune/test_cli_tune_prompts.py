"""``llmrecall tune-prompts``: interest prompt variants scored on validation with the real
local generator; the best template saved, versioned with its score; test never read."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

import llmrecall.evaluate.protocols as protocols
from llmrecall.cli import app
from llmrecall.tune.prompts import PromptVariant, load_saved

OWN = [{"name": "chat/titles", "params": {"prompt": "naive", "constrain": "none",
                                          "max_tokens": 12, "n_texts": 3},
        "template": "A person recently chose these movies:\n$history\n"
                    "List $count other movies they would enjoy, one per line."}]


class _Untouchable:
    """Stands in for the test task: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the prompt search read the test task ({name})")


def _run(tmp_path, out, *extra):
    variants = tmp_path / "variants.json"
    variants.write_text(json.dumps(OWN))
    args = ["tune-prompts", "--dataset", "ml-100k", "--users", "4", "--metric", "recall@100",
            "--noun", "movies", "--embedder", "none", "--variants", str(variants),
            "--store", str(tmp_path / "generations.sqlite"), "--output", str(out), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(out.with_name(f"{out.name}.search.json").read_text())


@pytest.mark.slow
def test_tune_prompts_saves_the_best_and_never_reads_test(tmp_path, monkeypatch):
    out = tmp_path / "prompts" / "interest"
    first = _run(tmp_path, out, "--rounds", "1", "--proposals", "1")
    names = [s["name"] for s in first["scored"]]
    assert "default" in names and "chat/titles" in names  # the default is always scored
    proposed = [s for s in first["scored"] if s["round"] == 1]
    assert len(proposed) + first["rejected_proposals"] == 1
    scores = [s["score"] for s in first["scored"]]
    assert scores == sorted(scores, reverse=True)
    assert first["best"]["score"] == scores[0] >= first["default"]["score"]
    # the saved template is the best variant, its sidecar records version, score, evaluation
    variant, record = load_saved(out)
    assert out.with_suffix(".txt").read_text() == first["scored"][0]["template"]
    assert record["version"] == variant.version == first["best"]["version"]
    assert record["score"] == first["best"]["score"] and record["revision"] == 1
    assert record["evaluation"]["metric"] == "recall@100"
    assert record["evaluation"]["users"] == first["users"] == 4

    # the same search with corrupted test targets, then with no test task at all: the same
    # scores (generation comes from the store), and the saved template stays as it was
    real = protocols.make_split

    def corrupted(dataset, protocol, seed):
        split = real(dataset, protocol, seed)
        t = split.test.targets
        noise = sp.random(t.shape[0], t.shape[1], density=0.01, format="csr",
                          random_state=np.random.default_rng(1))
        noise.data[:] = 1
        return replace(split, test=replace(split.test, targets=(noise + t).tocsr()))

    monkeypatch.setattr(protocols, "make_split", corrupted)
    again = _run(tmp_path, out)
    monkeypatch.setattr(protocols, "make_split",
                        lambda d, p, s: replace(real(d, p, s), test=_Untouchable()))
    blind = _run(tmp_path, out)
    round0 = {s["version"]: s["score"] for s in first["scored"] if s["round"] == 0}
    for run in (again, blind):
        assert {s["version"]: s["score"] for s in run["scored"]} == round0
        assert run["saved"] is False
    assert load_saved(out)[1]["revision"] == 1


def test_bad_variants_and_metric_are_reported_cleanly(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "x", "template": "no placeholder here"}]))
    common = ["tune-prompts", "--dataset", "ml-100k", "--output", str(tmp_path / "p")]
    result = CliRunner().invoke(app, common + ["--variants", str(bad)])
    assert result.exit_code == 2 and "history" in result.output
    result = CliRunner().invoke(app, common + ["--metric", "precision@5"])
    assert result.exit_code == 2 and "NAME@K" in result.output
    assert not (tmp_path / "p.txt").exists()


def test_variant_settings_are_checked_before_generation():
    from llmrecall.errors import ConfigError
    from llmrecall.tune.interest_prompts import interest_variants, variant_settings

    variants = interest_variants("movies")
    assert variants[0].name == "default"
    assert len({v.version for v in variants}) == len(variants)
    for v in variants:
        assert variant_settings(v, "movies")["template"] == v.template
    with pytest.raises(ConfigError, match="n_texts"):
        variant_settings(PromptVariant("x", "$history", {"n_texts": 0}), "movies")
