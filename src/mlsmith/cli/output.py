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
    Console(soft_wrap=True).print(metrics_table(results, title))


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "-"
    text = f"{entry['value']:.4f}"
    low, high = entry.get("ci95") or (None, None)
    if low is not None and high is not None:
        text += f" [{low:.4f}, {high:.4f}]"
    return text
