"""``mlsmith monitor PACKAGE --log DIR [--labels FILE] [--output report.html]
[--psi-threshold X] [--p-value X] [--min-rows N] [--max-metric-drop X] [--model NAME]
[--variant NAME] [--last N] [--tracking-uri URI] [--json]``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from mlsmith.monitoring import MonitorResult


def command(
    package: str = typer.Argument(
        ...,
        metavar="PACKAGE",
        help="Run directory, package directory or models:/NAME@ALIAS.",
        show_default=False,
    ),
    log_dir: Path = typer.Option(
        ...,
        "--log",
        metavar="DIR",
        help="The server's prediction log directory.",
        show_default=False,
    ),
    labels: Path = typer.Option(
        None,
        "--labels",
        metavar="FILE",
        help="True outcomes, CSV or Parquet: request_id and label columns (one line per "
        "predicted row, in request order; or a row column).",
        show_default=False,
    ),
    output: Path = typer.Option(
        None, "--output", "-o", help="Write the HTML report here.", show_default=False
    ),
    psi_threshold: float = typer.Option(
        None,
        "--psi-threshold",
        help="PSI above which a shift is large (default 0.2).",
        show_default=False,
    ),
    p_value: float = typer.Option(
        None,
        "--p-value",
        help="Test p-value below which a shift is real (default 0.01).",
        show_default=False,
    ),
    min_rows: int = typer.Option(
        None,
        "--min-rows",
        help="Fewer rows than this are not judged (default 100).",
        show_default=False,
    ),
    max_metric_drop: float = typer.Option(
        None,
        "--max-metric-drop",
        help="Accuracy lost, or relative RMSE increase, tolerated (default 0.05).",
        show_default=False,
    ),
    model: str = typer.Option(
        None, "--model", help="Only the rows of this served model name.", show_default=False
    ),
    variant: str = typer.Option(
        None, "--variant", help="Only the rows of this variant.", show_default=False
    ),
    last: int = typer.Option(
        None, "--last", metavar="N", help="Only the N most recent rows.", show_default=False
    ),
    tracking_uri: str = typer.Option(
        None,
        "--tracking-uri",
        help="MLflow store for models:/ (default: MLFLOW_TRACKING_URI, else runs/mlflow.db).",
        show_default=False,
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> int:
    """Compare a prediction log with the package's training data: drift per feature (PSI and a
    KS / chi-square test), prediction drift, and live performance on labels.

    Exits 0 when nothing passed a threshold, 1 on drift or degraded performance (time to
    retrain), 2 on an error.
    """
    from mlsmith.api import monitor

    result = monitor(
        package,
        log_dir,
        labels=labels,
        output=output,
        tracking_uri=tracking_uri,
        model=model,
        variant=variant,
        last=last,
        psi_threshold=psi_threshold,
        p_value=p_value,
        min_rows=min_rows,
        max_metric_drop=max_metric_drop,
    )
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        print_result(result)
    if result.report is not None:
        typer.echo(f"report: {result.report}", err=True)
    return result.exit_code


def print_result(result: MonitorResult) -> None:
    """Drift per feature and the prediction, live performance and the verdict, on stdout."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(soft_wrap=True)
    table = Table(title=f"drift over {result.rows:,} logged rows ({escape(result.log_dir)})")
    for column in ("feature", "type", "PSI", "test", "p-value", "drifted"):
        table.add_column(column, justify="right" if column in ("PSI", "p-value") else "left")
    rows = [*result.features, *([result.prediction] if result.prediction else [])]
    for drift in rows:
        mark = "[bold red]yes[/bold red]" if drift.drifted else "no"
        name = "(prediction)" if drift is result.prediction else drift.name
        table.add_row(
            escape(name),
            drift.type,
            _number(drift.psi),
            drift.test,
            _number(drift.p_value),
            mark,
        )
    console.print(table)
    perf = result.performance
    if perf is not None:
        live = Table(title=f"live performance on {perf.rows:,} labelled rows")
        split = perf.held_out_split or "held-out"
        for column in ("metric", "live", "95% CI", split):
            live.add_column(column, justify="left" if column == "metric" else "right")
        for name, entry in perf.metrics.items():
            low, high = entry.get("ci95") or (None, None)
            ci = "-" if low is None or high is None else f"[{low:.4f}, {high:.4f}]"
            held = perf.held_out.get(name, {}).get("value")
            live.add_row(name, _number(entry.get("value")), ci, _number(held))
        console.print(live)
    for note in result.notes:
        console.print(f"note: {escape(note)}")
    if result.exit_code:
        console.print(f"[bold red]drift[/bold red]: {escape('; '.join(result.reasons))}")
    else:
        console.print("[green]stable[/green]: no threshold passed")


def _number(value: float | None) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
