"""``mlsmith reproduce RUN_DIR``: train a run again from its directory and compare."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    run: Annotated[Path, typer.Argument(help="The run directory to reproduce.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Output folder of the new run (default: the run's own)."
        ),
    ] = None,
) -> None:
    """Re-run RUN_DIR from its config, check its data fingerprint, warn about every version that
    differs from its requirements.lock, and compare the new test metrics with the old (exit 1
    when the data changed)."""
    from rich.console import Console
    from rich.table import Table

    from mlsmith.api import reproduce

    result = reproduce(run, output=output)
    console = Console(stderr=True)
    table = Table(title=f"{result.original.path.name} reproduced as {result.new.path.name}")
    for column in ("test metric", "original", "reproduced", "difference", "original 95% CI"):
        table.add_column(column, justify="left" if column == "test metric" else "right")
    for row in result.metrics:
        table.add_row(
            row.name,
            _number(row.original),
            _number(row.new),
            "identical" if row.identical else _number(row.difference),
            "-"
            if not row.original_ci
            else f"[{_number(row.original_ci[0])}, {_number(row.original_ci[1])}]",
        )
    console.print(table)
    if result.environment:
        console.print(f"{len(result.environment)} difference(s) from the run's requirements.lock:")
        for line in result.environment[:20]:
            console.print(f"  {line}")
    verdict = (
        "identical test metrics"
        if result.identical
        else "the test metrics differ: compare the differences with the intervals above"
    )
    typer.echo(f"{verdict}; new run: {result.new.path}", err=True)
    typer.echo(str(result.new.path))


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"
