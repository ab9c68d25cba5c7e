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
        # Only headline metrics ({"value", "ci95"}); per-class blocks get their own table.
        names += [
            n for n, v in metrics.items() if n not in names and isinstance(v, dict) and "value" in v
        ]
    for name in names:
        cells = [_cell(results[split].get(name)) for split in splits]
        table.add_row(name, *cells)
    return table


def print_metrics(results: dict[str, dict[str, Any]], title: str | None = None) -> None:
    """The splits' metrics table, then the model vs its baseline when metrics.json has one."""
    from mlsmith.run import split_metrics

    console = Console(soft_wrap=True)
    splits = split_metrics(results)
    console.print(metrics_table(splits, title))
    per_class = per_class_table(splits)
    if per_class is not None:
        console.print(per_class)
    if results.get("vs_baseline"):
        console.print(baseline_table(results))
    if results.get("baselines"):
        console.print(forecast_baselines_table(results))


def per_class_table(results: dict[str, dict[str, Any]]) -> Table | None:
    """Detection's AP or segmentation's IoU and Dice per class, on the last split that has
    them (the test split when there is one); None without per-class metrics."""
    split = next((s for s in reversed(list(results)) if "per_class" in results[s]), None)
    if split is None:
        return None
    per_class: dict[str, dict[str, Any]] = results[split]["per_class"]
    columns = list(dict.fromkeys(key for values in per_class.values() for key in values))
    table = Table(title=f"per class, {split} split")
    table.add_column("class")
    for column in columns:
        table.add_column(column, justify="right")
    for name, values in per_class.items():
        table.add_row(name, *(_number(values.get(column)) for column in columns))
    return table


def forecast_baselines_table(results: dict[str, Any]) -> Table:
    """A forecast against its baselines on the test window: every metric of each."""
    split = "test"
    rows = {"model": results.get(split) or {}}
    rows |= {name: (by_split.get(split) or {}) for name, by_split in results["baselines"].items()}
    names = list(dict.fromkeys(metric for metrics in rows.values() for metric in metrics))
    table = Table(title=f"model vs baselines, {split} window (95% CI over series x windows)")
    table.add_column("forecaster")
    for name in names:
        table.add_column(name, justify="right")
    for forecaster, metrics in rows.items():
        table.add_row(forecaster, *(_number((metrics.get(n) or {}).get("value")) for n in names))
    return table


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
