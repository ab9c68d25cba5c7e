"""``mlsmith export RUN_DIR [--format onnx,torchscript] [--output DIR] [--tolerance X]
[--quantize int8] [--prune AMOUNT]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from mlsmith.errors import ConfigError

FORMATS = ("onnx", "torchscript")
QUANTIZATIONS = ("int8",)


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
    quantize: str = typer.Option(
        None,
        "--quantize",
        help="int8: serve the ONNX model quantized by ONNX Runtime (the float one is kept). "
        "Networks only. Default: the run's export.quantize.",
        show_default=False,
    ),
    prune: float = typer.Option(
        None,
        "--prune",
        metavar="AMOUNT",
        help="Serve the network with this share (0 < AMOUNT < 1) of its Linear/Conv weights "
        "pruned by magnitude, after a short fine-tune. Networks only. Default: the run's "
        "export.prune.",
        show_default=False,
    ),
    dockerfile: bool = typer.Option(
        False,
        "--dockerfile",
        help="Also write a Dockerfile in the package folder that serves it with `mlsmith "
        "serve` on port 8080 (docker build PACKAGE_DIR).",
    ),
) -> None:
    """Write the run's package: the model in MLflow's format, checked against the torch model."""
    from rich.console import Console
    from rich.table import Table

    from mlsmith.api import export

    chosen = _formats(formats)
    _check_options(quantize, prune)
    result = export(
        run,
        formats=chosen,
        tolerance=tolerance,
        output=output,
        quantize=quantize,
        prune=prune,
        dockerfile=dockerfile,
    )
    if "series_checked" in result:  # a forecasting run's package
        typer.echo(
            f"package of {run}: forecasts with {result['serves']} ({result['engine']}); checked "
            f"on {result['series_checked']} series of {result['rows_source']}: max |diff| from "
            f"mlsmith predict {result['package_check']['max_abs_diff']:.2g}",
            err=True,
        )
        _written(result, output or Path(run) / "package")
        return
    if result.get("task") in ("segmentation", "detection"):
        onnx = result["formats"]["onnx"]
        agreement = onnx.get("pixel_agreement")
        check = result["package_check"]
        typer.echo(
            f"{result['task']} network of {run} in ONNX: max |diff| of the {onnx['compared']} "
            f"{onnx['max_abs_diff']:.2g} on {result['rows_checked']} images of the "
            f"{result['rows_source']}"
            + (f", pixel classes agree {agreement:.2%}" if agreement is not None else "")
            + f"; package checked against {check['compared_with']}: "
            + (
                f"pixels agree {check['pixel_agreement']:.2%}"
                if "pixel_agreement" in check
                else f"{check['box_agreement']:.2%} of {check['boxes']} boxes agree, max "
                f"|diff| {check['max_abs_diff']:.2g} px"
            ),
            err=True,
        )
        _written(result, output or Path(run) / "package")
        return
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
    console = Console(stderr=True)
    console.print(table)
    if result.get("pruned") or result.get("quantized"):
        console.print(_variants_table(result))
    check = result["package_check"]
    typer.echo(
        f"package checked on {check['rows']} rows of the {result['rows_source']}: max |diff| "
        f"from {check.get('compared_with', 'mlsmith predict')} {check['max_abs_diff']:.2g}",
        err=True,
    )
    _written(result, output or Path(run) / "package")


def _written(result: dict[str, Any], package: Path) -> None:
    """The Dockerfile (when one was written) on stderr, the package folder on stdout."""
    if result.get("dockerfile"):
        typer.echo(f"Dockerfile: {result['dockerfile']}", err=True)
    typer.echo(str(package))


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


def _check_options(quantize: str | None, prune: float | None) -> None:
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConfigError(
            f"--quantize: unknown value '{quantize}'; choose from {', '.join(QUANTIZATIONS)}"
        )
    if prune is not None and not 0.0 < prune < 1.0:
        raise ConfigError(
            f"--prune: {prune:g} is not between 0 and 1 (exclusive); it is the share of the "
            "network's Linear/Conv weights set to zero, e.g. --prune 0.5"
        )


def _variants_table(result: dict[str, Any]) -> Any:
    """How the served network compares with the one it came from on the check rows: one
    column per change (pruned, int8), one row per figure."""
    from rich.table import Table

    pruned, quantized = result.get("pruned"), result.get("quantized")
    figures: dict[str, dict[str, str]] = {}
    if pruned:
        figures["pruned vs dense"] = {
            "how": f"{pruned['amount']:g} of weights, {pruned['fine_tune_steps']} tune steps",
            "sparsity": f"{pruned['sparsity']:.3f}",
            "metric": pruned["metric"],
            "before -> after": f"{_number(pruned['dense_value'])} -> "
            f"{_number(pruned['pruned_value'])}",
            "difference": _number(pruned["difference"], signed=True),
            "95% CI": _interval(pruned["ci95"]),
        }
    if quantized:
        speed = quantized["speed_ratio"]
        figures["int8 vs float"] = {
            "how": f"{quantized['method']} ({quantized['file']})",
            "metric": quantized["metric"],
            "before -> after": f"{_number(quantized['float_value'])} -> "
            f"{_number(quantized['int8_value'])}",
            "difference": _number(quantized["difference"], signed=True),
            "95% CI": _interval(quantized["ci95"]),
            "size": f"{quantized['size_ratio']:.2f}x the float file",
            "speed": f"{speed['batch_1']:.2f}x (batch 1), {speed['batch_1024']:.2f}x (1024)",
        }
    table = Table(title=f"serves {result['serves']}: on the {result['rows_checked']} check rows")
    table.add_column("")
    for name in figures:
        table.add_column(name)
    names = list(dict.fromkeys(key for column in figures.values() for key in column))
    for key in names:
        table.add_row(key, *[column.get(key, "-") for column in figures.values()])
    return table


def _number(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _interval(ci: list[float | None]) -> str:
    low, high = ci
    return "-" if low is None or high is None else f"[{low:+.4f}, {high:+.4f}]"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"
