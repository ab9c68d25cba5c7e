"""``mlsmith register RUN_DIR --name NAME [--alias ALIAS] [--tracking-uri URI]``."""

from __future__ import annotations

from pathlib import Path

import typer


def command(
    run: Path = typer.Argument(..., metavar="RUN_DIR", help="Run directory.", show_default=False),
    name: str = typer.Option(
        ..., "--name", "-n", help="Registered model name (created if absent).", show_default=False
    ),
    alias: str = typer.Option(
        None, "--alias", "-a", help="Alias to point at the new version.", show_default=False
    ),
    tracking_uri: str = typer.Option(
        None,
        "--tracking-uri",
        help="MLflow store (default: the one the run was tracked to).",
        show_default=False,
    ),
) -> None:
    """Register the run's package as a new version of NAME in MLflow's model registry, tagged
    with its test metrics, data fingerprint, code version and parity figures; prints its URI."""
    from mlsmith.api import register

    version = register(run, name, alias=alias, tracking_uri=tracking_uri)
    pointed = f"; alias '{version.alias}' points at it" if version.alias else ""
    typer.echo(
        f"registered {run} as version {version.version} of '{version.name}' in "
        f"{version.tracking_uri}{pointed}",
        err=True,
    )
    typer.echo(version.uri)
