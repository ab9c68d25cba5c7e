"""Comparing runs: the config keys that differ, headline metrics with intervals, and the
learning curves of every run overlaid on one page (``compare.html``, self-contained)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from mlsmith.errors import ConfigError
from mlsmith.files import atomic_path
from mlsmith.reports import plots
from mlsmith.reports.facts import HEADLINE_METRICS
from mlsmith.reports.html import CSS, Plot, figures
from mlsmith.reports.runinfo import RunRecord, format_ci, format_number, format_value, load_record

DEFAULT_OUTPUT = "compare.html"
MISSING = "-"


@dataclass(frozen=True)
class Comparison:
    """What ``mlsmith compare`` found; ``output`` is the HTML page it wrote."""

    output: Path
    runs: list[str]  # one label per run, in the order given
    paths: list[Path]
    differences: dict[str, list[str]]  # dotted config key -> its value in each run, as text
    splits: list[str | None]  # the split each run's metrics come from (test, else val)
    metrics: dict[str, list[dict[str, Any] | None]]  # metric -> its entry in each run
    ci_label: str = "95% CI"  # "CI" alone when the runs used different confidence levels

    def metric_cell(self, name: str, index: int) -> str:
        """``value [low, high]`` of one metric in one run, or "-"."""
        entry = self.metrics[name][index]
        if not entry or entry.get("value") is None:
            return MISSING
        ci = format_ci(entry)
        return format_number(entry["value"]) + ("" if ci == MISSING else f" {ci}")


def compare_runs(run_dirs: list[Path], output: str | Path | None = None) -> Comparison:
    """Compare two or more run directories; writes the HTML page to ``output``.

    ``output`` defaults to ``compare.html`` in the working directory. Raises ConfigError for
    fewer than two runs and RunError for a path that is not a run directory.
    """
    if len(run_dirs) < 2:
        raise ConfigError(f"compare needs at least 2 run directories, got {len(run_dirs)}")
    records = [load_record(path) for path in run_dirs]
    levels = {r.ci_label for r in records}
    comparison = Comparison(
        output=Path(output if output is not None else DEFAULT_OUTPUT).resolve(),
        runs=_labels(records),
        paths=[r.path for r in records],
        differences=config_differences(records),
        splits=[r.headline_split for r in records],
        metrics=_headline_metrics(records),
        ci_label=levels.pop() if len(levels) == 1 else "CI",
    )
    page = render_comparison(comparison, records)
    with atomic_path(comparison.output) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return comparison


def config_differences(records: list[RunRecord]) -> dict[str, list[str]]:
    """Dotted config keys whose values are not the same in every run, in config order."""
    flats = [r.config.flat() for r in records]
    keys = list(dict.fromkeys(key for flat in flats for key in flat))
    differences = {}
    for key in keys:
        values = [flat.get(key, MISSING) for flat in flats]
        if any(value != values[0] for value in values[1:]):
            differences[key] = [MISSING if v is MISSING else format_value(v) for v in values]
    return differences


def render_comparison(comparison: Comparison, records: list[RunRecord]) -> str:
    """The self-contained HTML page: the table, then the overlaid curves."""
    header = "".join(f"<th>{escape(label)}</th>" for label in comparison.runs)
    rows = [f'<tr><th colspan="{len(comparison.runs) + 1}">config keys that differ</th></tr>']
    if not comparison.differences:
        rows.append(f'<tr><td colspan="{len(comparison.runs) + 1}">none: same config</td></tr>')
    for key, values in comparison.differences.items():
        rows.append(_row(key, values))
    span = len(comparison.runs) + 1
    rows.append(f'<tr><th colspan="{span}">{escape(metrics_title(comparison))}</th></tr>')
    for name in comparison.metrics:
        cells = [comparison.metric_cell(name, i) for i in range(len(comparison.runs))]
        rows.append(_row(name, cells, numeric=True))
    table = f"<table><tr><th></th>{header}</tr>{''.join(rows)}</table>"
    paths = "".join(
        f"<li><b>{escape(label)}</b>: {escape(str(path))}</li>"
        for label, path in zip(comparison.runs, comparison.paths, strict=True)
    )
    monitored = monitored_metric(records)
    curves = [
        Plot("Loss per run", _loss_overlay(records, comparison.runs)),
        Plot(
            f"{monitored} per run" if monitored else "Validation metric per run",
            _metric_overlay(records, comparison.runs, monitored) if monitored else None,
        ),
    ]
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>mlsmith compare: {len(records)} runs</title><style>{CSS}</style></head>\n"
        f"<body><main><h1>Comparison of {len(records)} runs</h1>"
        f'<p class="sub">Written by mlsmith compare, {stamp}.</p><ul>{paths}</ul>'
        f"<h2>Config differences and metrics</h2>{table}"
        f"<h2>Learning curves</h2>{figures(curves)}</main></body></html>\n"
    )


def metrics_title(comparison: Comparison) -> str:
    """The heading of the metrics rows, naming the split(s) they come from."""
    splits = {s for s in comparison.splits if s}
    if not splits:
        return "metrics (not recorded)"
    if len(splits) == 1:
        return f"{splits.pop()} metrics ({comparison.ci_label})"
    return (
        f"metrics ({comparison.ci_label}; "
        + ", ".join(
            f"{label}: {split or 'none'}"
            for label, split in zip(comparison.runs, comparison.splits, strict=True)
        )
        + ")"
    )


def monitored_metric(records: list[RunRecord]) -> str | None:
    """The metric plotted beside the losses: the first run's checkpoint monitor when it is not
    a loss, else the first headline validation metric every run recorded."""
    histories = [r.history for r in records if r.history is not None]
    if not histories:
        return None
    monitor = records[0].monitor
    if not monitor.endswith("/loss") and any(monitor in h for h in histories):
        return monitor
    for name in HEADLINE_METRICS:
        if all(f"val/{name}" in h for h in histories):
            return f"val/{name}"
    return None


# --- helpers ----------------------------------------------------------------------------------


def _labels(records: list[RunRecord]) -> list[str]:
    labels = [r.id for r in records]
    if len(set(labels)) < len(labels) or len({r.config.experiment for r in records}) > 1:
        labels = [f"{r.config.experiment}/{r.id}" for r in records]
    # Still the same (one run given twice): number them so columns stay tellable apart.
    if len(set(labels)) < len(labels):
        labels = [f"{i + 1}: {label}" for i, label in enumerate(labels)]
    return labels


def _headline_metrics(records: list[RunRecord]) -> dict[str, list[dict[str, Any] | None]]:
    chosen = [r.metrics.get(r.headline_split or "", {}) for r in records]
    names = [n for n in HEADLINE_METRICS if any(n in metrics for metrics in chosen)]
    return {name: [metrics.get(name) for metrics in chosen] for name in names}


def _loss_overlay(records: list[RunRecord], labels: list[str]) -> bytes | None:
    series = []
    for i, (record, label) in enumerate(zip(records, labels, strict=True)):
        history = record.history
        if history is None or "epoch" not in history:
            continue
        color = f"C{i % 10}"
        for column, style in (("val/loss", "-"), ("train/loss", "--")):
            if column in history:
                y = history[column].to_numpy(dtype=float)
                series.append(
                    plots.Series(f"{label} {column}", history["epoch"].to_numpy(), y, color, style)
                )
    return plots.curves(
        series,
        title="Loss per run (solid: val, dashed: train)",
        xlabel="epoch",
        ylabel="loss (mean per sample)",
        log_y=False,
    )


def _metric_overlay(records: list[RunRecord], labels: list[str], metric: str) -> bytes | None:
    series = [
        plots.Series(
            label,
            r.history["epoch"].to_numpy(),
            r.history[metric].to_numpy(dtype=float),
            f"C{i % 10}",
        )
        for i, (r, label) in enumerate(zip(records, labels, strict=True))
        if r.history is not None and metric in r.history and "epoch" in r.history
    ]
    return plots.curves(
        series, title=f"{metric} per run", xlabel="epoch", ylabel=metric, log_y=False
    )


def _row(name: str, cells: list[str], numeric: bool = False) -> str:
    css = ' class="num"' if numeric else ""
    return (
        f"<tr><th>{escape(name)}</th>"
        + "".join(f"<td{css}>{escape(c)}</td>" for c in cells)
        + "</tr>"
    )
