"""Result tables for the terminal (rich) and for docs (markdown)."""

from __future__ import annotations

from rich.table import Table

TABLE_KS = (10, 20, 50, 100, 200)


#: the reference rows' names (``report["reference"]``, e.g. cold-items' random ranking)
REFERENCE_ROWS = {"random": "random (expected)"}


def _cells(metrics: dict) -> list[str]:
    cells = [f"{metrics.get(f'recall@{k}', float('nan')):.4f}" for k in TABLE_KS]
    cells += [f"{metrics.get(f'ndcg@{k}', float('nan')):.4f}" for k in TABLE_KS]
    return cells + [f"{metrics.get('coverage@50', float('nan')):.3f}"]


def _rows(report: dict):
    timings = report.get("timings", {})
    fit, rec = timings.get("fit_seconds", {}), timings.get("recall_seconds", {})
    for name, metrics in report["results"].items():
        if name == "fused":
            f, r = sum(fit.values()), sum(rec.values()) + timings.get("fusion_seconds", 0.0)
        else:
            f, r = fit.get(name, float("nan")), rec.get(name, float("nan"))
        yield name, _cells(metrics) + [f"{f:.1f}", f"{r:.1f}"]
    for name, label in REFERENCE_ROWS.items():
        metrics = report.get("reference", {}).get(name)
        if metrics is not None:  # computed, not run: no timings
            yield label, _cells(metrics) + ["-", "-"]


def _header() -> list[str]:
    return ([f"R@{k}" for k in TABLE_KS] + [f"N@{k}" for k in TABLE_KS]
            + ["cov@50", "fit s", "recall s"])


def rich_table(report: dict) -> Table:
    title = (f"{report['dataset']} · {report['protocol']} · seed {report['seed']} · "
             f"{report.get('split', 'test')} · config {report['config_hash']} · "
             f"{report.get('users_evaluated', '?')} users")
    table = Table(title=title)
    table.add_column("channel")
    for h in _header():
        table.add_column(h, justify="right")
    styles = {"fused": "bold", **{label: "dim" for label in REFERENCE_ROWS.values()}}
    for name, cells in _rows(report):
        table.add_row(name, *cells, style=styles.get(name))
    return table


def markdown_table(report: dict) -> str:
    head = ["channel"] + _header()
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, cells in _rows(report):
        name = f"**{name}**" if name == "fused" else name
        lines.append("| " + " | ".join([name] + cells) + " |")
    return "\n".join(lines)
