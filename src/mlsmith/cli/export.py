"""``mlsmith export RUN_DIR [--format onnx,torchscript] [--output DIR]``."""

from __future__ import annotations

from pathlib import Path

import typer

from mlsmith.errors import ConfigError

FORMATS = ("onnx", "torchscript")


def command(
    run: Path = typer.Argument(..., metavar="RUN_DIR", help="Run directory.", show_default=False),
    formats: str = typer.Option(
        None,
        "--format",
        "-f",
        help="Comma-separated: onnx (what the package serves), torchscript. Default: the run's "
        "export.formats.",
        show_default=False,
    ),
    output: Path = typer.Option(
        None, "--output", "-o", help="Where to write the package (default: RUN_DIR/package)."
    ),
    tolerance: float = typer.Option(
        None,
        "--tolerance",
        min=0.0,
        help="Largest output difference from the torch model accepted (default 1e-5).",
        show_default=False,
    ),
) -> None:
    """Write the run's package: the model in MLflow's format, checked against the torch model."""
    from rich.console import Console
    from rich.table import Table

    from mlsmith.api import export

    chosen = _formats(formats)
    result = export(run, formats=chosen, tolerance=tolerance, output=output)
    table = Table(title=f"package of {run} (serves {result['serves']})")
    for column in (
        "format",
        "max |diff|",
        "rows",
        "batch 1 ms",
        "vs torch",
        "batch 1024 ms",
        "vs torch",
        "size",
    ):
        table.add_column(column, justify="left" if column == "format" else "right")
    for name, record in result["formats"].items():
        latency = record.get("latency_ms", {})
        one, many = latency.get("batch_1", {}), latency.get("batch_1024", {})
        table.add_row(
            name,
            f"{record['max_abs_diff']:.2g}",
            str(result["rows_checked"]),
            f"{one[name]:.3f}" if one else "-",
            f"{one['speedup_vs_torch']:.2f}x" if one else "-",
            f"{many[name]:.2f}" if many else "-",
            f"{many['speedup_vs_torch']:.2f}x" if many else "-",
            _size(record["bytes"]),
        )
    Console(stderr=True).print(table)
    check = result["package_check"]
    typer.echo(
        f"package checked on {check['rows']} rows of the {result['rows_source']}: max |diff| "
        f"from mlsmith predict {check['max_abs_diff']:.2g}",
        err=True,
    )
    typer.echo(str(output or Path(run) / "package"))


def _formats(text: str | None) -> list[str] | None:
    if not text:
        return None
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown:
        raise ConfigError(
            f"--format: unknown format '{unknown[0]}'; choose from {', '.join(FORMATS)}"
        )
    return chosen


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"
