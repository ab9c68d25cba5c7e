"""``mlsmith report RUN_DIR``: (re)write report.html, REPORT.md and MODEL_CARD.md."""

from __future__ import annotations

from pathlib import Path

import typer


def command(
    run: Path = typer.Argument(..., metavar="RUN_DIR", help="Run directory.", show_default=False),
) -> None:
    """Write the run's HTML report, Markdown report and model card; prints their paths."""
    from mlsmith.api import report

    for path in report(run):
        typer.echo(str(path))
