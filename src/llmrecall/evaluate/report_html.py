"""The HTML evaluation report: one self-contained file of interactive charts.

``llmrecall report RESULTS.json [MORE.json ...] --out report.html`` (or ``evaluate --report``)
reads each results JSON and its ranks sidecar (:mod:`llmrecall.evaluate.ranks`) and draws
recall/NDCG curves, channel complementarity, recall by user and item segment, popularity bias,
cold vs warm targets and timings, one labelled series per results file (``docs/report.md``).

The charts are Plotly figures. Their specs (``{"data": [...], "layout": {...}}``) are embedded
as JSON blocks (``<script type="application/json" class="figure" data-name=...>``) that a
few lines of JavaScript hand to plotly.js, which is inlined once: the file opens offline, and
the numbers drawn can be read back from it (the tests do).

Every curve is recomputed from the sidecar's ranks exactly as
:func:`llmrecall.evaluate.metrics.ranking_metrics` computes the JSON's metrics, and
:func:`load_run` refuses a sidecar whose recall/NDCG at the JSON's cut-offs differ from the
JSON's: what the report draws is what the JSON says.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmrecall.errors import ConfigError, DataError
from llmrecall.evaluate.ranks import BUCKETS, load_ranks, sidecar_path

#: curves run from K = 1 to this (or the list's length, if shorter)
CURVE_K = 200
#: history length bucket edges (interactions): [1, 5), [5, 10), ..., [500, inf)
HISTORY_EDGES = (1, 5, 10, 20, 50, 100, 200, 500)
#: days since the user's last activity (before the evaluation's latest interaction)
RECENCY_DAYS = (1, 7, 30, 90, 365)
#: |recomputed - JSON| allowed for a metric (they are computed by the same float operations)
TOLERANCE = 1e-9
#: plotly.js configuration of every chart: no logo, no link to the Plotly cloud
PLOT_CONFIG = {"displaylogo": False, "responsive": True, "showLink": False}


@dataclass
class Run:
    """One evaluation: its results JSON and its sidecar arrays.

    Attributes:
        label: the name its series carry in every chart.
        results: the results dict (as ``llmrecall evaluate -o`` writes it).
        meta: the sidecar's meta dict.
        arrays: the sidecar's arrays (:mod:`llmrecall.evaluate.ranks`).
    """

    label: str
    results: dict
    meta: dict
    arrays: dict[str, np.ndarray]
    _hits: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def lists(self) -> list[str]:
        """Channel names in the results' order, then ``fused``."""
        return list(self.meta["lists"])

    @property
    def channels(self) -> list[str]:
        return [name for name in self.lists if name != "fused"]

    @property
    def n_targets(self) -> np.ndarray:
        """int64[u] targets per evaluated user."""
        return np.diff(self.arrays["target_indptr"])

    @property
    def target_row(self) -> np.ndarray:
        """int64[t] the evaluated user (row) each target belongs to."""
        n = self.n_targets
        return np.repeat(np.arange(len(n)), n)

    def rank(self, name: str) -> np.ndarray:
        """int32[t] each target's 1-based rank in list ``name``, -1 when absent."""
        return self.arrays[f"rank.{name}"]

    def width(self, name: str) -> int:
        return int(self.meta["list_lengths"][name])

    def hits(self, name: str) -> np.ndarray:
        """bool[u, min(CURVE_K, width)]: whether slot j of the user's list ``name`` is a hit."""
        if name not in self._hits:
            width = min(CURVE_K, self.width(name))
            rank = self.rank(name)
            found = (rank >= 1) & (rank <= width)
            hits = np.zeros((len(self.n_targets), width), bool)
            hits[self.target_row[found], rank[found] - 1] = True
            self._hits[name] = hits
        return self._hits[name]


def curves(run: Run, name: str) -> dict[str, list[float]]:
    """Recall@K and NDCG@K of list ``name`` for K = 1 .. min(CURVE_K, its length).

    The same operations as :func:`llmrecall.evaluate.metrics.ranking_metrics` on the same
    hits (cumulative sums along the list, then a mean over users), so the values at the
    JSON's cut-offs equal the JSON's.
    """
    hits = run.hits(name)
    width = hits.shape[1]
    n_targets = run.n_targets
    found = np.cumsum(hits, axis=1)
    discount = 1.0 / np.log2(np.arange(2, width + 2))
    dcg = np.cumsum(hits * discount, axis=1)
    ideal = np.cumsum(discount)
    recall, ndcg = [], []
    for k in range(1, width + 1):
        recall.append(float(np.mean(found[:, k - 1] / n_targets)))
        ndcg.append(float(np.mean(dcg[:, k - 1] / ideal[np.minimum(n_targets, k) - 1])))
    return {"recall": recall, "ndcg": ndcg}


def check_run(run: Run, path: Path) -> None:
    """Raise DataError unless the sidecar's recomputed recall@K and ndcg@K equal the JSON's
    at every cut-off the JSON reports (a sidecar of another evaluation fails here)."""
    results = run.results["results"]
    if sorted(results) != sorted(run.lists):
        raise DataError(f"the results list {sorted(results)}, the ranks file "
                        f"{sorted(run.lists)}: the ranks file belongs to another evaluation",
                        path=str(path))
    users = int(len(run.n_targets))
    if users != run.results.get("users_evaluated", users):
        raise DataError(f"the ranks file holds {users} users, the results "
                        f"{run.results['users_evaluated']}", path=str(path))
    for name in run.lists:
        got = curves(run, name)
        for key, value in results[name].items():
            metric, _, k = key.partition("@")
            if metric not in got or not k.isdigit() or int(k) > len(got[metric]):
                continue
            mine = got[metric][int(k) - 1]
            if not math.isclose(mine, value, rel_tol=0.0, abs_tol=TOLERANCE):
                raise DataError(f"{key} of {name} recomputed from the ranks file is {mine!r}, "
                                f"the results say {value!r}: the ranks file belongs to "
                                "another evaluation", path=str(path))


def load_run(path: Path | str, label: str | None = None) -> Run:
    """Read results file ``path`` and its sidecar, checked against each other (DataError
    naming the file on any problem)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("results file not found", path=str(path))
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"not a results JSON ({exc})", path=str(path)) from None
    if not isinstance(results, dict) or not isinstance(results.get("results"), dict) \
            or "fused" not in results["results"]:
        raise DataError("not a results file of `llmrecall evaluate` (no results.fused)",
                        path=str(path))
    meta, arrays = load_ranks(sidecar_path(path))
    run = Run(label or path.stem, results, meta, arrays)
    check_run(run, sidecar_path(path))
    return run


def run_from_memory(label: str, results: dict, ranks: dict[str, np.ndarray]) -> Run:
    """A :class:`Run` from :func:`llmrecall.evaluate.ranks.build_ranks`'s arrays, unsaved."""
    arrays = dict(ranks)
    meta = json.loads(str(arrays.pop("meta")))
    run = Run(label, results, meta, arrays)
    check_run(run, Path(f"<{label}>"))
    return run


def unique_labels(paths: list[Path]) -> list[str]:
    """Short distinct labels for result files: their stems, or more of their path when two
    stems are equal."""
    labels = [p.stem for p in paths]
    depth = 1
    while len(set(labels)) < len(labels) and depth < 8:
        depth += 1
        labels = ["/".join(p.with_suffix("").parts[-depth:]) for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{i + 1}: {label}" for i, label in enumerate(labels)]
    return labels


# ---- figures -------------------------------------------------------------------------------

#: one colour per list name (stable across runs), one dash per run
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
#: bars of the same list in different runs differ by their fill pattern
PATTERNS = ("", "/", "x", ".", "\\", "+")


class _Style:
    """Colours per list name (fused always black) and dashes per run."""

    def __init__(self, runs: list[Run]):
        names: list[str] = []
        for run in runs:
            names += [n for n in run.channels if n not in names]
        self.colour = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
        self.colour["fused"] = "#000000"
        self.dash = {run.label: DASHES[i % len(DASHES)] for i, run in enumerate(runs)}
        self.pattern = {run.label: PATTERNS[i % len(PATTERNS)] for i, run in enumerate(runs)}
        self.bar_colour = {run.label: PALETTE[i % len(PALETTE)] for i, run in enumerate(runs)}


def _series(run: Run, name: str) -> str:
    return f"{run.label} · {name}"


def _layout(title: str, x: str, y: str, **more) -> dict:
    return {"title": {"text": title}, "xaxis": {"title": {"text": x}},
            "yaxis": {"title": {"text": y}}, "template": "plotly_white",
            "legend": {"groupclick": "toggleitem"}, "hovermode": "closest", **more}


def _curve_figure(runs: list[Run], style: _Style, metric: str) -> dict:
    data = []
    for run in runs:
        fused_metrics = run.results["results"]["fused"]
        ks = sorted(int(key.split("@")[1]) for key in fused_metrics if key.startswith(f"{metric}@"))
        data.append({  # the results JSON's own numbers, drawn on the curve they belong to
            "type": "scatter", "mode": "markers", "name": f"{run.label} · fused (results JSON)",
            "legendgroup": run.label, "x": ks, "y": [fused_metrics[f"{metric}@{k}"] for k in ks],
            "marker": {"color": "#000000", "size": 8, "symbol": "circle-open"},
            "meta": {"run": run.label, "list": "fused", "source": "results JSON"},
            "hovertemplate": f"{run.label} results JSON: {metric}@%{{x}} = %{{y:.4f}}<extra></extra>",
        })
        for name in run.lists:
            values = curves(run, name)[metric]
            fused = name == "fused"
            data.append({
                "type": "scatter", "mode": "lines", "name": _series(run, name),
                "legendgroup": run.label, "legendgrouptitle": {"text": run.label},
                "x": list(range(1, len(values) + 1)), "y": values,
                "line": {"color": style.colour[name], "dash": style.dash[run.label],
                         "width": 3 if fused else 1.5},
                "meta": {"run": run.label, "list": name},
                "hovertemplate": f"{_series(run, name)}<br>K=%{{x}}<br>{metric}@K=%{{y:.4f}}"
                                 "<extra></extra>",
            })
    return {"data": data, "layout": _layout(f"{'Recall' if metric == 'recall' else 'NDCG'}@K",
                                            "K (list length)", f"{metric}@K")}


def complementarity(run: Run, k: int, within: int | None = None) -> dict[str, int]:
    """Per channel: the fused top-``k`` hits that no other channel holds among its first
    ``within`` items (None: its whole list, which is what fusion saw; ``k``: the channels'
    own top ``k``). Also ``"fused hits"``: all fused top-``k`` hits."""
    fused = run.rank("fused")
    fused_hit = (fused >= 1) & (fused <= k)
    limit = np.iinfo(np.int32).max if within is None else within
    held = np.stack([(run.rank(n) >= 1) & (run.rank(n) <= limit) for n in run.channels]) \
        if run.channels else np.zeros((0, len(fused)), bool)
    alone = held.sum(axis=0) == 1
    out = {name: int((fused_hit & alone & held[i]).sum()) for i, name in enumerate(run.channels)}
    out["fused hits"] = int(fused_hit.sum())
    return out


def overlap(run: Run, k: int) -> tuple[list[str], list[list[float]], list[list[int]]]:
    """Jaccard overlap of the channels' hit sets at top-``k`` (their own lists): names,
    matrix [c][c] (1 on the diagonal; 0 when neither has a hit), shared-hit counts [c][c]."""
    names = run.channels
    hit = [(run.rank(n) >= 1) & (run.rank(n) <= k) for n in names]
    jac, both = [], []
    for a in hit:
        jac.append([float((a & b).sum() / max(int((a | b).sum()), 1)) for b in hit])
        both.append([int((a & b).sum()) for b in hit])
    return names, jac, both


def _complementarity_figure(runs: list[Run], style: _Style, k: int) -> dict:
    data = []
    for run in runs:
        for within, what, shape in ((k, f"only this channel ranks it in its top {k}", ""),
                                    (None, "only this channel's list holds it", "/")):
            counts = complementarity(run, k, within)
            total = max(counts["fused hits"], 1)
            data.append({
                "type": "bar", "name": f"{run.label} · {what}", "x": run.channels,
                "y": [counts[n] for n in run.channels], "legendgroup": run.label,
                "customdata": [counts[n] / total for n in run.channels],
                "marker": {"color": style.bar_colour[run.label], "pattern": {"shape": shape}},
                "meta": {"run": run.label, "within": within, "fused_hits": counts["fused hits"]},
                "hovertemplate": "%{x}: %{y} of " + str(counts["fused hits"]) +
                                 f" fused hits (%{{customdata:.1%}}): {what}"
                                 "<extra>" + html.escape(run.label) + "</extra>",
            })
    return {"data": data, "layout": _layout(
        f"Fused hits@{k} that one channel alone found", "channel",
        f"held-out items in the fused top {k}", barmode="group")}


def _overlap_figure(run: Run, k: int) -> dict:
    names, jac, both = overlap(run, k)
    return {"data": [{
        "type": "heatmap", "x": names, "y": names, "z": jac, "customdata": both,
        "zmin": 0, "zmax": 1, "colorscale": "Blues", "texttemplate": "%{z:.2f}",
        "name": run.label, "meta": {"run": run.label},
        "hovertemplate": "%{y} ∩ %{x}: %{customdata} shared hits, Jaccard %{z:.3f}<extra></extra>",
    }], "layout": _layout(f"{run.label}: overlap of the channels' hits@{k} (Jaccard)", "", "",
                          height=max(350, 60 * len(names) + 150))}


def _segment_recall(run: Run, name: str, k: int, codes: np.ndarray, n_codes: int,
                    ) -> tuple[list[float | None], list[int]]:
    """Mean per-user recall@k of list ``name`` within each user segment (codes[u])."""
    hits = run.hits(name)
    per_user = hits[:, :min(k, hits.shape[1])].sum(axis=1) / run.n_targets
    values: list[float | None] = []
    sizes = []
    for c in range(n_codes):
        inside = codes == c
        sizes.append(int(inside.sum()))
        values.append(float(per_user[inside].mean()) if inside.any() else None)
    return values, sizes


def _history_segments(run: Run) -> tuple[np.ndarray, list[str]]:
    lengths = run.arrays["history_length"]
    edges = list(HISTORY_EDGES)
    labels = ["0"] + [f"{lo}–{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:])] + [f"{edges[-1]}+"]
    return np.searchsorted(edges, lengths, side="right"), labels


def _recency_segments(run: Run) -> tuple[np.ndarray, list[str], str]:
    last = run.arrays["last_time"]
    ref = run.meta.get("reference_time")
    gap = (ref - last) if ref is not None else np.full(len(last), np.nan)
    if run.meta.get("time_unit") == "seconds":
        edges = [d * 86400.0 for d in RECENCY_DAYS]
        labels = [f"< {RECENCY_DAYS[0]} day"] + [
            f"{lo}–{hi} days" for lo, hi in zip(RECENCY_DAYS[:-1], RECENCY_DAYS[1:])] + [
            f"> {RECENCY_DAYS[-1]} days"]
        unit = "days since the user's last interaction"
    else:  # positions: quartiles of the gap, as there is no clock
        finite = gap[np.isfinite(gap)]
        edges = sorted(set(np.quantile(finite, [0.25, 0.5, 0.75]).tolist())) if finite.size else []
        bounds = [0.0] + edges
        labels = [f"< {edges[0]:g}"] if edges else []
        labels += [f"{lo:g}–{hi:g}" for lo, hi in zip(bounds[1:-1], bounds[2:])]
        labels += [f"≥ {edges[-1]:g}" if edges else "all"]
        unit = "positions since the user's last interaction"
    codes = np.searchsorted(edges, np.nan_to_num(gap, nan=np.inf), side="right")
    return codes, labels, unit


def _segment_figure(runs: list[Run], style: _Style, k: int, which: str) -> dict:
    data, axis = [], ""
    for run in runs:
        if which == "history":
            codes, labels = _history_segments(run)
            axis = "interactions in the user's history"
        else:
            codes, labels, axis = _recency_segments(run)
        for name in run.lists:
            values, sizes = _segment_recall(run, name, k, codes, len(labels))
            keep = [i for i, s in enumerate(sizes) if s]
            data.append({
                "type": "bar", "name": _series(run, name), "legendgroup": run.label,
                "legendgrouptitle": {"text": run.label},
                "x": [labels[i] for i in keep], "y": [values[i] for i in keep],
                "customdata": [sizes[i] for i in keep],
                "marker": {"color": style.colour[name],
                           "pattern": {"shape": style.pattern[run.label]}},
                "visible": True if name == "fused" else "legendonly",
                "meta": {"run": run.label, "list": name},
                "hovertemplate": f"{_series(run, name)}<br>%{{x}}: recall@{k} %{{y:.4f}} "
                                 "over %{customdata} users<extra></extra>",
            })
    title = ("by history length" if which == "history" else "by activity recency")
    return {"data": data, "layout": _layout(f"Recall@{k} {title} (click the legend to add channels)",
                                            axis, f"recall@{k}", barmode="group")}


def _target_figure(runs: list[Run], style: _Style, k: int, which: str) -> dict:
    """Hit rate@k of the targets in each popularity bucket, or cold vs warm."""
    data = []
    for run in runs:
        if which == "popularity":
            codes, labels = run.arrays["target_bucket"].astype(int), list(BUCKETS)
        else:
            codes, labels = np.where(run.arrays["target_cold"], 0, 1), ["cold", "warm"]
        for name in run.lists:
            rank = run.rank(name)
            hit = (rank >= 1) & (rank <= k)
            sizes = [int((codes == c).sum()) for c in range(len(labels))]
            keep = [c for c in range(len(labels)) if sizes[c]]
            data.append({
                "type": "bar", "name": _series(run, name), "legendgroup": run.label,
                "legendgrouptitle": {"text": run.label},
                "x": [labels[c] for c in keep],
                "y": [float(hit[codes == c].mean()) for c in keep],
                "customdata": [sizes[c] for c in keep],
                "marker": {"color": style.colour[name],
                           "pattern": {"shape": style.pattern[run.label]}},
                "visible": True if name == "fused" else "legendonly",
                "meta": {"run": run.label, "list": name},
                "hovertemplate": f"{_series(run, name)}<br>%{{x}}: %{{y:.4f}} of %{{customdata}} "
                                 "targets found<extra></extra>",
            })
    axis = ("target's train popularity (head / torso / tail: a third of the train interactions "
            "each)" if which == "popularity" else "target item (cold: no train interactions)")
    title = "by item popularity" if which == "popularity" else "cold vs warm items"
    return {"data": data, "layout": _layout(f"Targets found in the top {k}, {title}", axis,
                                            f"share of targets in the top {k}", barmode="group")}


def _coverage_figure(runs: list[Run], style: _Style) -> dict:
    data = []
    for run in runs:
        for name in run.lists:
            metrics = run.results["results"][name]
            ks = sorted(int(key.split("@")[1]) for key in metrics if key.startswith("coverage@"))
            data.append({
                "type": "scatter", "mode": "lines+markers", "name": _series(run, name),
                "legendgroup": run.label, "legendgrouptitle": {"text": run.label},
                "x": ks, "y": [metrics[f"coverage@{k}"] for k in ks],
                "line": {"color": style.colour[name], "dash": style.dash[run.label],
                         "width": 3 if name == "fused" else 1.5},
                "meta": {"run": run.label, "list": name},
                "hovertemplate": f"{_series(run, name)}<br>coverage@%{{x}} = %{{y:.3f}}<extra></extra>",
            })
    return {"data": data, "layout": _layout("Catalog coverage: distinct items in all users' top K",
                                            "K", "share of the catalog", xaxis={
                                                "type": "log", "title": {"text": "K"},
                                                "tickvals": [1, 2, 5, 10, 20, 50, 100, 200, 500,
                                                             1000]})}


def _bias_figure(runs: list[Run], k: int) -> dict:
    """Share of head / torso / tail items among each list's top ``k`` slots, next to the
    targets' and the catalog's shares (stacked bars, one bar per run · list)."""
    x, shares, mean_pop = [], [], []
    for run in runs:
        bucket = run.arrays["target_bucket"]
        x.append(f"{run.label} · targets")
        shares.append([float((bucket == c).mean()) for c in range(len(BUCKETS))])
        mean_pop.append(run.meta.get("target_mean_popularity"))
        x.append(f"{run.label} · catalog")
        shares.append(list(run.meta["catalog_bucket_share"]))
        mean_pop.append(None)
        for name in run.lists:
            ks = run.arrays[f"bias_ks.{name}"].tolist()
            if not ks:
                continue
            # the largest summarised cut-off not above k (the smallest if all are)
            i = max([j for j, c in enumerate(ks) if c <= k], default=0)
            x.append(f"{run.label} · {name}@{ks[i]}")
            shares.append(run.arrays[f"exposure.{name}"][i].tolist())
            value = float(run.arrays[f"mean_popularity.{name}"][i])
            mean_pop.append(None if math.isnan(value) else value)
    colours = {"head": "#d62728", "torso": "#ff7f0e", "tail": "#2ca02c"}
    data = [{
        "type": "bar", "name": bucket, "x": x, "y": [s[c] for s in shares],
        "customdata": mean_pop, "marker": {"color": colours[bucket]},
        "meta": {"bucket": bucket},
        "hovertemplate": "%{x}<br>" + bucket + ": %{y:.1%}<br>mean train popularity of the "
                         "items: %{customdata:.1f}<extra></extra>",
    } for c, bucket in enumerate(BUCKETS)]
    return {"data": data, "layout": _layout(
        f"Popularity bias: head / torso / tail share of the top {k} (targets and catalog for "
        "reference)", "", "share of list slots", barmode="stack",
        xaxis={"tickangle": -30, "automargin": True})}


def _timing_figure(runs: list[Run], style: _Style) -> dict:
    data = []
    for run in runs:
        timings = run.results.get("timings", {})
        for what, key in (("fit", "fit_seconds"), ("recall", "recall_seconds")):
            seconds = timings.get(key, {})
            names = [n for n in run.channels if n in seconds]
            data.append({
                "type": "bar", "name": f"{run.label} · {what}", "x": names,
                "y": [float(seconds[n]) for n in names], "legendgroup": run.label,
                "marker": {"color": style.bar_colour[run.label],
                           "pattern": {"shape": "" if what == "fit" else "/"}},
                "meta": {"run": run.label, "what": what},
                "hovertemplate": f"%{{x}} {what}: %{{y:.2f}} s<extra>{html.escape(run.label)}</extra>",
            })
    return {"data": data, "layout": _layout("Fit and recall time per channel (all evaluated users)",
                                            "channel", "seconds", barmode="group")}


# ---- the page ------------------------------------------------------------------------------

def figures(runs: list[Run], k: int = 50) -> list[tuple[str, str, str, dict]]:
    """The report's charts: (name, heading, explanation, figure spec) in page order.

    ``k``: the cut-off of the complementarity, segment and bias charts (at most each list's
    length; curves and coverage span all K).
    """
    style = _Style(runs)
    out = [
        ("recall-curves", "Recall@K", "Share of each user's held-out items found in the top K, "
         "averaged over users, for K = 1 to 200; the circles are the fused numbers of the "
         "results JSON, which lie on the curves.", _curve_figure(runs, style, "recall")),
        ("ndcg-curves", "NDCG@K", "Like recall, but a hit counts more the higher it is ranked "
         "(discount 1 / log2(rank + 1)).", _curve_figure(runs, style, "ndcg")),
        ("complementarity", "What each channel alone contributes",
         f"Held-out items in the fused top {k} that one channel alone found. Plain bars: no "
         f"other channel ranks the item in its own top {k}. Hatched bars: no other channel's "
         "list holds it at all (at the length fusion reads), so without this channel fusion "
         "could not have found it.",
         _complementarity_figure(runs, style, k)),
    ]
    for run in runs:
        out.append((f"overlap-{len(out)}", f"Overlap of channels' hits: {run.label}",
                    f"Jaccard overlap of the held-out items two channels find in their own top {k}: "
                    "1 means they find the same items, 0 that they never agree.",
                    _overlap_figure(run, k)))
    out += [
        ("recall-by-history", "Recall by history length",
         f"Recall@{k} of users grouped by the number of interactions in the history they were "
         "recalled from; the fused list is shown, channels are one click away in the legend.",
         _segment_figure(runs, style, k, "history")),
        ("recall-by-recency", "Recall by activity recency",
         f"Recall@{k} of users grouped by the time from their last interaction to the latest "
         "interaction in the evaluation's history.", _segment_figure(runs, style, k, "recency")),
        ("recall-by-popularity", "Recall by item popularity",
         f"Share of held-out items found in the top {k}, by the item's train popularity: head "
         "items are the few most popular ones that make up the first third of the train "
         "interactions, tail items the many that make up the last third (and new items).",
         _target_figure(runs, style, k, "popularity")),
        ("coverage", "Catalog coverage", "Distinct items recommended to all evaluated users "
         "together, as a share of the catalog (from the results JSON).",
         _coverage_figure(runs, style)),
        ("popularity-bias", "Popularity bias", f"Where each list's top {k} slots go: head, torso "
         "or tail items, next to the same shares among the held-out items and the catalog.",
         _bias_figure(runs, k)),
    ]
    if any(run.arrays["target_cold"].any() for run in runs):
        out.append(("cold-vs-warm", "Cold vs warm items",
                    f"Share of held-out items found in the top {k}, for items with no train "
                    "interaction (cold) and the others (warm).",
                    _target_figure(runs, style, k, "cold")))
    out.append(("timings", "Time per channel", "Fit time on the train split and recall time "
                "for all evaluated users (from the results JSON).", _timing_figure(runs, style)))
    return out


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto;
       max-width: 1280px; padding: 0 16px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin: 28px 0 4px; }
p.note { color: #555; margin: 0 0 6px; max-width: 900px; }
table { border-collapse: collapse; font-size: 0.9em; margin: 8px 0 16px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.plot { width: 100%; min-height: 460px; }
"""

_BOOT = """
document.querySelectorAll('script.figure').forEach(function (node) {
  var spec = JSON.parse(node.textContent);
  Plotly.newPlot(node.dataset.target, spec.data, spec.layout, CONFIG);
});
"""


def _summary(runs: list[Run]) -> str:
    ks = sorted({int(key.split("@")[1]) for run in runs for key in run.results["results"]["fused"]
                 if key.startswith("recall@")})
    head = ["results", "dataset", "protocol", "seed", "split", "config", "users"]
    head += [f"R@{k}" for k in ks] + [f"N@{k}" for k in ks]
    rows = []
    for run in runs:
        r, fused = run.results, run.results["results"]["fused"]
        cells = [run.label, r.get("dataset", ""), r.get("protocol", ""), r.get("seed", ""),
                 r.get("split", ""), r.get("config_hash", ""), r.get("users_evaluated", "")]
        cells += [f"{fused[f'recall@{k}']:.4f}" if f"recall@{k}" in fused else "" for k in ks]
        cells += [f"{fused[f'ndcg@{k}']:.4f}" if f"ndcg@{k}" in fused else "" for k in ks]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _embed(value) -> str:
    """JSON for inside a <script> element: '</' cannot close it early."""
    return json.dumps(value, allow_nan=False, separators=(",", ":")).replace("</", "<\\/")


def require_plotly() -> None:
    """Raise ConfigError, saying what to install, unless plotly can be imported (it is the
    optional ``report`` extra): commands call this before any work."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise ConfigError("the HTML report needs plotly, which is not installed: "
                          "pip install 'llmrecall[report]' (or `make install`)") from None


def render(runs: list[Run], k: int = 50) -> str:
    """The whole report as one HTML document (plotly.js inlined: no network to open it)."""
    require_plotly()
    from plotly.offline import get_plotlyjs

    if not runs:
        raise DataError("the report needs at least one results file")
    parts = []
    for name, heading, note, spec in figures(runs, k):
        spec = _validated(spec)
        parts.append(f'<section><h2>{html.escape(heading)}</h2><p class="note">{html.escape(note)}'
                     f'</p><div class="plot" id="{name}"></div><script type="application/json" '
                     f'class="figure" data-name="{name}" data-target="{name}">{_embed(spec)}'
                     "</script></section>")
    title = "llmrecall evaluation report: " + ", ".join(run.label for run in runs)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
            f"<script>{get_plotlyjs()}</script></head><body>"
            f"<h1>{html.escape(title)}</h1>"
            "<p class=\"note\">Fused list in black; each results file is one legend group "
            "(line dash), click a legend entry to hide or show a series. The numbers are "
            "recomputed from the per-target ranks and equal the results JSON's.</p>"
            f"{_summary(runs)}{''.join(parts)}"
            f"<script>var CONFIG = {_embed(PLOT_CONFIG)};{_BOOT}</script></body></html>\n")


def _validated(spec: dict) -> dict:
    """``spec`` checked by plotly's figure classes (a misspelt property raises here, not as a
    silently empty chart in the browser), as plain JSON values."""
    import plotly.graph_objects as go

    figure = go.Figure(data=spec["data"], layout=spec["layout"])
    return _finite(figure.to_plotly_json())


def _finite(value):
    """NaN/inf (an empty segment, a missing timing) become null: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value


def write_report(runs: list[Run], out: Path | str, k: int = 50) -> Path:
    """Render ``runs`` and write the HTML to ``out`` (its folder made)."""
    out = Path(out)
    text = render(runs, k)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
