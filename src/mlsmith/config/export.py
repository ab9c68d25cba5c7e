"""The model package every run leaves (``export:``) and its registration (``track.register``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mlsmith.config.base import Section

ExportFormat = Literal["onnx", "torchscript"]
Quantization = Literal["int8"]


class ExportConfig(Section):
    """``<run>/package/``: raw rows in, predictions out, verified against the trained model."""

    package: bool = Field(True, description="write <run>/package/ at the end of train")
    formats: list[ExportFormat] = Field(
        default_factory=lambda: list[ExportFormat](["onnx"]),
        description="formats exported for torch families (the package serves ONNX)",
    )
    tolerance: float = Field(
        1e-5, gt=0.0, description="largest output difference from the torch model accepted"
    )
    quantize: Quantization | None = Field(
        None,
        description="serve the network quantized with ONNX Runtime (int8: dynamic, or static "
        "where it measures better), keeping the float model beside it; networks only",
    )
    prune: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="serve the network with this share of its Linear/Conv weights set to zero "
        "(global magnitude pruning, then a short fine-tune); networks only",
    )


class RegisterConfig(Section):
    """Register the run's package in the MLflow model registry at the end of train."""

    name: str = Field(..., min_length=1, description="registered model name")
    alias: str | None = Field(None, description="alias to point at the new version")
