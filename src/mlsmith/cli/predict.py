"""``mlsmith predict RUN_DIR --input FILE --output FILE``."""

from __future__ import annotations

from pathlib import Path

import typer


def command(
    run: Path = typer.Argument(..., metavar="RUN_DIR", help="Run directory.", show_default=False),
    input_path: Path = typer.Option(
        ...,
        "--input",
        "-i",
        help="Raw rows: CSV or Parquet; for image runs also a folder of images or an .npz.",
        show_default=False,
    ),
    output_path: Path = typer.Option(
        ...,
        "--output",
        "-o",
        help="Where to write predictions (.csv or .parquet).",
        show_default=False,
    ),
    chunk_rows: int = typer.Option(
        50_000, "--chunk-rows", min=1, help="Rows read, predicted and written at a time."
    ),
    keep: list[str] = typer.Option(
        None, "--keep", help="Input column to copy into the output (repeatable), e.g. an id."
    ),
) -> None:
    """Predict raw rows in constant memory: the prediction, plus class probabilities."""
    from mlsmith.api import predict

    rows = predict(run, input_path, output_path, chunk_rows=chunk_rows, keep_columns=keep or [])
    typer.echo(f"wrote {rows} predictions to {output_path}", err=True)
    typer.echo(str(output_path))
