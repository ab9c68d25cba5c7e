"""``mlsmith compare RUN_DIR RUN_DIR ... [--output FILE]``."""

from __future__ import annotations

from pathlib import Path

import typer


def command(
    runs: list[Path] = typer.Argument(
        ..., metavar="RUN_DIR...", help="Two or more run directories.", show_default=False
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="HTML file to write (default: compare.html here)."
    ),
) -> None:
    """Compare runs: config keys that differ and headline metrics (stdout), plus an HTML page
    with the learning curves overlaid; prints the page's path last."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from mlsmith.api import compare
    from mlsmith.reports.compare import metrics_title

    result = compare(list(runs), output)
    table = Table(title=f"{len(result.runs)} runs")
    table.add_column("")
    for label in result.runs:
        table.add_column(escape(label), overflow="fold")
    table.add_row("[bold]config keys that differ[/bold]")
    if not result.differences:
        table.add_row("(none: same config)")
    for key, values in result.differences.items():
        table.add_row(escape(key), *(escape(v) for v in values))
    table.add_section()
    table.add_row(f"[bold]{escape(metrics_title(result))}[/bold]")
    for name in result.metrics:
        table.add_row(name, *(result.metric_cell(name, i) for i in range(len(result.runs))))
    Console(soft_wrap=True).print(table)
    typer.echo(str(result.output))
