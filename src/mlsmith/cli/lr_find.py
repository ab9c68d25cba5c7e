"""``mlsmith lr-find CONFIG [a.b=value ...] [--min-lr] [--max-lr] [--steps] [--output DIR]``."""

from __future__ import annotations

from pathlib import Path

import typer


def command(
    config: Path = typer.Argument(
        ..., metavar="CONFIG", help="YAML config file.", show_default=False
    ),
    overrides: list[str] = typer.Argument(
        None, help="Config overrides, e.g. train.batch_size=64.", show_default=False
    ),
    min_lr: float = typer.Option(1e-7, "--min-lr", help="First learning rate tried."),
    max_lr: float = typer.Option(10.0, "--max-lr", help="Last learning rate tried."),
    steps: int = typer.Option(100, "--steps", help="Optimizer steps (one LR each)."),
    output: Path | None = typer.Option(
        None,
        "--output",
        help="Folder for lr_find.png and lr_find.csv (default: under output_dir/experiment).",
    ),
) -> None:
    """LR range test: train briefly with an exponentially growing LR; plot and suggest one."""
    from mlsmith.api import lr_find

    result = lr_find(
        config, overrides or [], min_lr=min_lr, max_lr=max_lr, steps=steps, output=output
    )
    tried = f"{len(result.lrs)} steps from {result.lrs[0]:.2g} to {result.lrs[-1]:.2g}"
    ending = "; stopped when the loss diverged" if result.diverged else ""
    typer.echo(f"lr range test: {tried}{ending} ({result.seconds:.1f} s)", err=True)
    if result.suggested_lr is None:
        typer.echo("no suggestion: the loss never fell; try a wider --min-lr/--max-lr range")
    else:
        typer.echo(
            f"suggested lr: {result.suggested_lr:.3g} (steepest descent; loss lowest at "
            f"{result.min_loss_lr:.3g})"
        )
        typer.echo(
            f"train with: mlsmith train {config} train.optimizer.lr={result.suggested_lr:.3g}"
        )
    typer.echo(f"plot: {result.plot}")
    typer.echo(f"table: {result.table}")
