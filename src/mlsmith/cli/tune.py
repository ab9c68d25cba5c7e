"""``mlsmith tune CONFIG [a.b=value ...] [--trials N] [--timeout S] [--storage URL] [--study NAME]
[--workers K]``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from mlsmith.tuning import TuneResult


def command(
    config: Path = typer.Argument(
        ..., metavar="CONFIG", help="YAML config file with a 'tune' section.", show_default=False
    ),
    overrides: list[str] = typer.Argument(
        None, help="Config overrides, e.g. train.epochs=5.", show_default=False
    ),
    trials: int | None = typer.Option(
        None, "--trials", help="Total trials of the study (default: tune.trials)."
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", help="Start no new trial after this many seconds."
    ),
    storage: str | None = typer.Option(
        None,
        "--storage",
        help="Optuna storage URL, e.g. postgresql://user@host/db "
        "(default: SQLite in OUTPUT_DIR/EXPERIMENT/optuna.db).",
    ),
    study: str | None = typer.Option(
        None, "--study", help="Study name (default: the experiment name)."
    ),
    workers: int = typer.Option(1, "--workers", help="Local worker processes."),
    worker_index: int = typer.Option(
        0,
        "--worker-index",
        help="Join a study another process leads: run its queued trials, write no results.",
    ),
) -> None:
    """Search the config's tune.space: one pruned, tracked training run per trial."""
    from mlsmith.api import tune

    result = tune(
        config,
        overrides or [],
        trials=trials,
        timeout=timeout,
        storage=storage,
        study=study,
        workers=workers,
        worker_index=worker_index,
    )
    if worker_index == 0:
        print_result(result)


def print_result(result: TuneResult, top: int = 10) -> None:
    from rich.console import Console
    from rich.table import Table

    counts = ", ".join(f"{k.lower()} {v}" for k, v in result.counts.items() if v)
    table = Table(title=f"study {result.study}: {counts}")
    table.add_column("trial", justify="right")
    table.add_column("state")
    table.add_column(result.metric, justify="right")
    table.add_column("params")
    for trial in result.top(top):
        value = "-" if trial.value is None else f"{trial.value:.6g}"
        params = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={json.dumps(v)}"
            for k, v in trial.params.items()
        )
        if trial.error:
            params += f"  ({trial.error[:80]})"
        table.add_row(str(trial.number), trial.state, value, params)
    Console(soft_wrap=True).print(table)
    if result.best_config is not None:
        typer.echo(f"best: trial {result.best_trial}, {result.metric} = {result.best_value:.6g}")
        typer.echo(f"report: {result.report}")
        typer.echo(str(result.best_config))
