"""``mlsmith promote NAME --candidate ALIAS|VERSION --to ALIAS [--data FILE] [--metric M]
[--margin X] [--force [--reason TEXT]] [--tracking-uri URI]``, and ``--rollback --to ALIAS``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from mlsmith.registry import Decision

STYLES = {"promoted": "green", "refused": "bold red", "forced": "yellow", "rolled back": "yellow"}


def command(
    name: str = typer.Argument(..., metavar="NAME", help="Registered model.", show_default=False),
    candidate: str = typer.Option(
        None,
        "--candidate",
        "-c",
        metavar="ALIAS|VERSION",
        help="The version to promote: a number or an alias.",
        show_default=False,
    ),
    to: str = typer.Option(
        ..., "--to", metavar="ALIAS", help="The alias to move.", show_default=False
    ),
    data: Path = typer.Option(
        None,
        "--data",
        help="Labelled rows to compare on (default: the candidate run's test split).",
        show_default=False,
    ),
    metric: str = typer.Option(
        None, "--metric", help="Metric to compare (default: accuracy, rmse).", show_default=False
    ),
    margin: float = typer.Option(
        0.0, "--margin", min=0.0, help="How much worse the candidate may be, in metric units."
    ),
    force: bool = typer.Option(False, "--force", help="Move the alias whatever the figures say."),
    reason: str = typer.Option(
        None, "--reason", help="Why --force was needed (recorded).", show_default=False
    ),
    rollback: bool = typer.Option(
        False, "--rollback", help="Move the alias back to the version that held it before."
    ),
    tracking_uri: str = typer.Option(
        None,
        "--tracking-uri",
        help="MLflow store (default: MLFLOW_TRACKING_URI, else runs/mlflow.db).",
        show_default=False,
    ),
) -> int:
    """Move an alias to a candidate version only if it is not worse than the version holding it:
    both scored on the same held-out rows, with a paired bootstrap 95% interval.

    Exits 0 when the alias moved, 1 when it was refused, 2 on an error.
    """
    from mlsmith.api import promote

    decision = promote(
        name,
        candidate,
        to,
        data=data,
        metric=metric,
        margin=margin,
        force=force,
        reason=reason,
        rollback=rollback,
        tracking_uri=tracking_uri,
    )
    print_decision(decision)
    return decision.exit_code


def print_decision(decision: Decision) -> None:
    """The decision as a table on stdout: versions, figures, checks, outcome and why."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"promote '{escape(decision.name)}' to '{escape(decision.alias)}'")
    table.add_column("")
    table.add_column("")
    table.add_row("candidate", f"version {decision.candidate}")
    table.add_row("incumbent", f"version {decision.incumbent}" if decision.incumbent else "none")
    figures = decision.figures
    if figures is not None:
        low, high = figures.ci95
        table.add_row("rows", f"{figures.rows} ({escape(figures.source)})")
        table.add_row("left out", f"{figures.rows_excluded} (a version trained on them)")
        table.add_row(f"{figures.metric}", f"{figures.candidate:.4f} vs {figures.incumbent:.4f}")
        table.add_row(
            "difference (+ = better)", f"{figures.difference:+.4f} [{low:+.4f}, {high:+.4f}]"
        )
        table.add_row("margin", f"{decision.margin:g}")
    for check in decision.checks:
        mark = "[green]ok[/green]" if check.passed else "[bold red]failed[/bold red]"
        table.add_row(f"check: {check.name}", f"{mark} {escape(check.detail)}")
    style = STYLES[decision.outcome]
    table.add_row("decision", f"[{style}]{decision.outcome}[/{style}]")
    table.add_row("why", escape(decision.reason))
    Console(soft_wrap=True).print(table)
