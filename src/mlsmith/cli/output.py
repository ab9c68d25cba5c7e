"""Rendering results for the terminal: metrics tables on stdout."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def metrics_table(results: dict[str, dict[str, Any]], title: str | None = None) -> Table:
    """One row per metric, one column per split, values with their 95% interval."""
    splits = list(results)
    table = Table(title=title)
    table.add_column("metric")
    for split in splits:
        table.add_column(split, justify="right")
    names: list[str] = []
    for metrics in results.values():
        names += [n for n in metrics if n not in names]
    for name in names:
        cells = [_cell(results[split].get(name)) for split in splits]
        table.add_row(name, *cells)
    return table


def print_metrics(results: dict[str, dict[str, Any]], title: str | None = None) -> None:
    """The splits' metrics table, then the model vs its baseline when metrics.json has one."""
    from mlsmith.run import split_metrics

    console = Console(soft_wrap=True)
    console.print(metrics_table(split_metrics(results), title))
    if results.get("vs_baseline"):
        console.print(baseline_table(results))


def baseline_table(results: dict[str, Any]) -> Table:
    """Model, baseline and majority class on the held-out split, with the paired difference."""
    split, difference = next(iter(results["vs_baseline"].items()))
    majority = (results.get("majority") or {}).get(split) or {}
    table = Table(title=f"model vs baseline, {split} split (paired 95% CI)")
    # A ranking's reference is a random order, not a majority class.
    reference = "random order" if any(n.startswith("ndcg_") for n in difference) else "majority"
    for column in ("metric", "model", "baseline", "difference", reference):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, entry in difference.items():
        table.add_row(
            name,
            _number(entry.get("a")),
            _number(entry.get("b")),
            _difference(entry),
            _number((majority.get(name) or {}).get("value")),
        )
    return table


def _difference(entry: dict[str, Any]) -> str:
    if entry.get("value") is None:
        return "-"
    low, high = entry.get("ci95") or (None, None)
    interval = "" if low is None or high is None else f" [{low:+.3f}, {high:+.3f}]"
    return f"{entry['value']:+.3f}{interval}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "-"
    text = f"{entry['value']:.4f}"
    low, high = entry.get("ci95") or (None, None)
    if low is not None and high is not None:
        text += f" [{low:.4f}, {high:.4f}]"
    return text
