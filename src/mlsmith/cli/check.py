"""``mlsmith check CONFIG [a.b=value ...] [--quick] [--json]``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from mlsmith.checks import CheckReport

STYLES = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def command(
    config: Path = typer.Argument(
        ..., metavar="CONFIG", help="YAML config file.", show_default=False
    ),
    overrides: list[str] = typer.Argument(
        None, help="Config overrides, e.g. train.optimizer.lr=3e-4.", show_default=False
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Leave out the one-batch overfitting test (what train runs)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> int:
    """Check config, data, splits and model in seconds, training nothing for real.

    Exits 0 when no check fails, 1 when one does, 2 when the config is invalid.
    """
    from mlsmith.api import check
    from mlsmith.training import distributed

    if distributed.launched_rank() != 0:
        return 0  # under torchrun: rank 0 checks and reports, once; the others are done
    report = check(config, overrides or [], quick=quick)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_report(report)
    return 1 if report.failed else 0


def print_report(report: CheckReport) -> None:
    """A table of checks (grouped, status coloured) and a one-line summary, on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        # Piped or captured: wide enough that each check's detail stays on one line.
        console = Console(width=max(console.width, 400))
    table = Table(title="mlsmith check" + (" (quick)" if report.quick else ""))
    table.add_column("Check", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    table.add_column("Detail")
    results = report.results
    for i, result in enumerate(results):
        last_of_group = i + 1 == len(results) or results[i + 1].group != result.group
        table.add_row(
            f"{result.group}: {result.name}",
            f"[{STYLES[result.status]}]{result.status}[/]",
            result.detail,
            end_section=last_of_group,
        )
    console.print(table)
    counts = report.counts()
    summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    verdict = "[bold red]FAILED[/]" if report.failed else "[green]OK[/]"
    console.print(f"{verdict}: {summary}")
