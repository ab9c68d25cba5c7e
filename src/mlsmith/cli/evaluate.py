"""``mlsmith evaluate RUN_DIR [--data FILE] [--json]``."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def command(
    run: Path = typer.Argument(..., metavar="RUN_DIR", help="Run directory.", show_default=False),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Labelled CSV/Parquet (image runs: also a class-per-folder directory or an .npz) "
        "to score (default: the run's test split).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Score a run's best checkpoint with 95% bootstrap intervals; results go to metrics.json."""
    from mlsmith.api import evaluate
    from mlsmith.cli.output import print_metrics

    results = evaluate(run, data)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        print_metrics(results)
