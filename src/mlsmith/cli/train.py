"""``mlsmith train CONFIG [a.b=value ...] [--resume RUN_DIR]``."""

from __future__ import annotations

import os
from pathlib import Path

import typer


def command(
    config: Path = typer.Argument(
        ..., metavar="CONFIG", help="YAML config file.", show_default=False
    ),
    overrides: list[str] = typer.Argument(
        None,
        help="Config overrides, e.g. train.epochs=5 train.optimizer.lr=3e-4.",
        show_default=False,
    ),
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue the run in this directory from its last checkpoint."
    ),
    progress: bool | None = typer.Option(
        None,
        "--progress/--no-progress",
        help="Live progress bar (default: on when attached to a terminal).",
    ),
) -> None:
    """Train, evaluate on the test split and track a run; prints the run directory last."""
    from mlsmith.api import train
    from mlsmith.cli.output import print_metrics
    from mlsmith.pipeline import RUN_RECORD
    from mlsmith.run import cv_means
    from mlsmith.training.distributed import launched_rank

    run = train(config, overrides or [], resume=resume, progress=progress)
    if launched_rank() != 0 or os.environ.get(RUN_RECORD):
        return  # under torchrun, rank 0 prints the run (or mlsmith's launcher, when it ran it)
    # With eval.cv, a first column: each metric's mean over the held-out folds [t-interval];
    # print_metrics leaves out metrics.json's other sections and prints the baseline's own table.
    table = {**cv_means(run.metrics), **run.metrics}
    print_metrics(table, title=f"{run.config.experiment} / {run.id}")
    typer.echo(str(run.path))
