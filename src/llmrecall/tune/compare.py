"""Tuned against untuned on the test split, once, channel by channel.

This is the only place tuning output meets test data, and it runs after tuning has finished:
the tuned config is fixed before any test target is read.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.table import Table

from llmrecall.config import PipelineConfig
from llmrecall.data.dataset import Dataset
from llmrecall.evaluate.experiment import DEFAULT_KS, evaluate
from llmrecall.evaluate.protocols import Split, make_split
from llmrecall.tune.objective import parse_metric
from llmrecall.tune.store import FittedChannels


def compare_on_test(dataset: Dataset, protocol: str, default: PipelineConfig,
                    tuned: PipelineConfig, metric: str, *, seed: int = 0,
                    progress: Callable[[str], None] | None = None,
                    split: Split | None = None, models: FittedChannels | None = None) -> dict:
    """Evaluate both configs on test; rows per channel (and ``fused``) for ``metric``'s name.

    Both evaluations share one split and one :class:`FittedChannels` (``split``/``models``
    when given, e.g. the tuner's, else made here), so a channel the two configs define alike
    is fitted once; the evaluation is otherwise exactly :func:`evaluate`'s.

    Returns ``{"metric", "ks", "default": report, "tuned": report, "rows": {channel: {...}}}``
    where each row holds ``default``/``tuned``/``delta`` of ``NAME@k`` for every reported k
    (10, 20, 50, 100, 200 and the metric's K, up to the shortest channel list).
    """
    ks = comparison_ks(default, tuned, metric)
    split = split or make_split(dataset, protocol, seed)
    models = models or FittedChannels(split.train)
    reports = {}
    for label, config in (("default", default), ("tuned", tuned)):
        if progress is not None:
            progress(f"evaluating the {label} config on test")
        reports[label] = evaluate(dataset, protocol, config, seed=seed, ks=ks, on="test",
                                  progress=progress, split=split, models=models)
    return comparison(reports["default"], reports["tuned"], metric, ks)


def comparison_ks(default: PipelineConfig, tuned: PipelineConfig, metric: str) -> tuple[int, ...]:
    """The cut-offs both configs are compared at: 10, 20, 50, 100, 200 and the metric's K,
    up to the shortest channel list (each channel's own list is scored too)."""
    _, k = parse_metric(metric)
    shortest = min(c.k or cfg.fusion.channel_k
                   for cfg in (default, tuned) for c in cfg.enabled_channels)
    return tuple(sorted(kk for kk in {*DEFAULT_KS, k} if kk <= shortest))


def comparison(default: dict, tuned: dict, metric: str, ks: tuple[int, ...]) -> dict:
    """The comparison of two evaluation reports on test (what :func:`compare_on_test`
    returns): rows per channel, ``fused`` last, of ``NAME@k`` default, tuned and delta."""
    name, k = parse_metric(metric)
    channels = list(dict.fromkeys([*default["results"], *tuned["results"]]))
    channels.sort(key=lambda c: c == "fused")  # fused last, as in the evaluation tables
    rows = {}
    for channel in channels:
        row = {}
        for kk in ks:
            key = f"{name}@{kk}"
            d = default["results"].get(channel, {}).get(key)
            t = tuned["results"].get(channel, {}).get(key)
            row[key] = {"default": d, "tuned": t,
                        "delta": None if d is None or t is None else t - d}
        rows[channel] = row
    return {"metric": f"{name}@{k}", "ks": list(ks), "default": default,
            "tuned": tuned, "rows": rows}


def comparison_table(comparison: dict) -> Table:
    """A rich table: one row per channel; default, tuned and change at K = 10, 50 and the
    metric's K (the JSON holds every K)."""
    name, k = comparison["metric"].split("@")
    ks = sorted({10, 50, int(k)} & set(comparison["ks"])) or comparison["ks"]
    d, t = comparison["default"], comparison["tuned"]
    table = Table(title=f"{d['dataset']} · {d['protocol']} · test · {name} · default "
                        f"{d['config_hash']} vs tuned {t['config_hash']}")
    table.add_column("channel")
    for kk in ks:
        for head in (f"@{kk} default", "tuned", "change"):
            table.add_column(head, justify="right")
    for channel, row in comparison["rows"].items():
        cells = []
        for kk in ks:
            cell = row[f"{name}@{kk}"]
            cells += [_num(cell["default"]), _num(cell["tuned"]),
                      "" if cell["delta"] is None else f"{cell['delta']:+.4f}"]
        table.add_row(channel, *cells, style="bold" if channel == "fused" else None)
    return table


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"
