"""An int8 copy of an exported network, made by ONNX Runtime's quantization tools and measured
against the float model it came from before it may serve.

Dynamic quantization (weights int8, each activation's range taken at run time) is ONNX
Runtime's standard recipe for matrix products, so for MLPs, bags and transformers it is the only
candidate. A graph with convolutions also gets static quantization (QDQ, activation ranges
calibrated on up to :data:`CALIBRATION_ROWS` training rows), because dynamic quantization runs
convolutions through ``ConvInteger``, which is slow on CPUs. Every candidate is run on the check
rows and timed beside the float model; the better by the task's headline metric is kept (when
the paired interval of their difference excludes zero), else the faster, and the record says
which and why.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.packaging.measures import (
    LATENCY_BATCHES,
    Runner,
    median_ms,
    metric_difference,
    raw_outputs,
    repeats_for,
    timing_inputs,
)
from mlsmith.runtime.engines import OnnxEngine, import_library

if TYPE_CHECKING:
    from mlsmith.runtime.package import Encoder
    from mlsmith.tasks import Task

log = logging.getLogger(__name__)

QUANTIZED_FILE = "model.int8.onnx"
# Static quantization's activation ranges come from this many training rows, this many a call.
CALIBRATION_ROWS = 200
CALIBRATION_BATCH = 32
# Weights as 7-bit values: CPUs without VNNI multiply uint8 activations by int8 weights with
# 16-bit intermediate sums that can saturate; a package may be served on such a CPU.
REDUCE_RANGE = True


@dataclass
class Inputs:
    """What quantization is measured on: the encoded check rows with their truth, and the float
    model's raw outputs on them."""

    encoder: Encoder
    check: dict[str, np.ndarray]
    truth: np.ndarray
    float_raw: np.ndarray
    task: Task
    batch_size: int
    resamples: int
    seed: int


@dataclass
class Candidate:
    """One int8 model: how it was made, where it is, what it outputs and how fast it runs."""

    method: str
    file: Path
    raw: np.ndarray
    ms: dict[int, float]  # batch size -> median milliseconds per call


def quantize_network(
    float_file: Path, inputs: Inputs, calibration: dict[str, np.ndarray] | None
) -> tuple[dict[str, Any], np.ndarray]:
    """Write :data:`QUANTIZED_FILE` beside ``float_file`` (an ONNX model); return its record for
    ``export.json`` and its raw outputs on the check rows.

    ``calibration``: encoded training rows for static quantization (used for convolutional
    graphs only).
    """
    _quantization()  # a missing onnxruntime is a MissingExtraError before any work
    with tempfile.TemporaryDirectory(prefix=".quantize.", dir=float_file.parent) as folder:
        scratch = Path(folder)
        prepared, preprocessing = _prepared(float_file, scratch / "prepared.onnx")
        made = [("dynamic", _dynamic(prepared, scratch / "dynamic.onnx"))]
        static = calibration is not None and _has_convolutions(prepared)
        if static:
            assert calibration is not None
            made.append(("static", _static(prepared, scratch / "static.onnx", inputs, calibration)))
        float_runner = _runner(float_file)
        float_ms, candidates = _measure(float_runner, made, inputs)
        chosen, reason, compared = _choose(candidates, inputs, static)
        target = float_file.parent / QUANTIZED_FILE
        shutil.copyfile(chosen.file, target)
    float_bytes, int8_bytes = float_file.stat().st_size, target.stat().st_size
    versus_float = compared[chosen.method]
    record: dict[str, Any] = {
        "method": chosen.method,
        "file": QUANTIZED_FILE,
        "float_file": float_file.name,
        "bytes": int8_bytes,
        "float_bytes": float_bytes,
        "size_ratio": round(int8_bytes / float_bytes, 4),
        "speed_ratio": _speed_ratios(float_ms, chosen.ms),
        "latency_ms": {
            f"batch_{b}": {"float": round(float_ms[b], 4), "int8": round(chosen.ms[b], 4)}
            for b in LATENCY_BATCHES
        },
        "metric": versus_float["metric"],
        "float_value": versus_float["base"],
        "int8_value": versus_float["variant"],
        "difference": versus_float["difference"],
        "ci95": versus_float["ci95"],
        "rows": versus_float["rows"],
        "max_abs_diff_from_float": _max_abs_diff(inputs, chosen.raw),
        "reason": reason,
        "settings": _settings(chosen.method, calibration),
        "preprocessing": preprocessing,
        "candidates": {
            c.method: {
                f"{compared[c.method]['metric']}": compared[c.method]["variant"],
                "difference": compared[c.method]["difference"],
                "ci95": compared[c.method]["ci95"],
                "speed_ratio": _speed_ratios(float_ms, c.ms),
            }
            for c in candidates
        },
    }
    return record, chosen.raw


# --- making the candidates --------------------------------------------------------------------


def _prepared(float_file: Path, output: Path) -> tuple[Path, str]:
    """The float model after ONNX Runtime's pre-processing (shape inference and graph
    optimisation, which quantization expects), or the model itself when that fails."""
    shapes = import_library(
        "onnxruntime.quantization.shape_inference", "export", "Quantizing an ONNX model"
    )
    try:
        # Symbolic shape inference is skipped: the exporter's graphs already carry their shapes
        # (the quantized graphs came out identical with and without it), it fails on the text
        # models' graphs, and when it fails it writes files into the working directory.
        with _quiet():
            shapes.quant_pre_process(str(float_file), str(output), skip_symbolic_shape=True)
    except Exception as error:  # pre-processing is an optimisation; quantization works without
        log.warning(
            "quantization pre-processing failed (%s); quantizing the model as exported", error
        )
        return float_file, f"none ({type(error).__name__}: {error})"
    return output, "quant_pre_process (ONNX shape inference and graph optimisation)"


def _dynamic(model: Path, output: Path) -> Path:
    ort = _quantization()
    with _quiet():
        ort.quantize_dynamic(
            str(model), str(output), weight_type=ort.QuantType.QInt8, reduce_range=REDUCE_RANGE
        )
    return output


def _static(model: Path, output: Path, inputs: Inputs, rows: dict[str, np.ndarray]) -> Path:
    ort = _quantization()
    with _quiet():
        ort.quantize_static(
            str(model),
            str(output),
            _Calibration(inputs.encoder, rows),
            # QDQ is what ONNX Runtime's CPU kernels fuse; uint8 activations with int8 weights
            # is its recommendation for x86; per-channel weights follow convolutions' per-filter
            # scales (batch norms folded in), which one scale per tensor flattens.
            quant_format=ort.QuantFormat.QDQ,
            activation_type=ort.QuantType.QUInt8,
            weight_type=ort.QuantType.QInt8,
            per_channel=True,
            reduce_range=REDUCE_RANGE,
            calibrate_method=ort.CalibrationMethod.MinMax,
        )
    return output


def _quantization() -> Any:
    """``onnxruntime.quantization`` (untyped: used through this one name)."""
    return import_library("onnxruntime.quantization", "export", "Quantizing an ONNX model")


class _Calibration:
    """ONNX Runtime's CalibrationDataReader: the training rows' inputs, a batch per call."""

    def __init__(self, encoder: Encoder, rows: dict[str, np.ndarray]) -> None:
        n = len(next(iter(rows.values())))
        self.batches: Iterator[dict[str, np.ndarray]] = iter(
            [
                encoder.batch(rows, start, min(start + CALIBRATION_BATCH, n))
                for start in range(0, n, CALIBRATION_BATCH)
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def _has_convolutions(model: Path) -> bool:
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    return any(node.op_type == "Conv" for node in graph.node)


@contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantization tools warn about the numerics of tensors they then handle
    (ranges of zero width); what the result does is measured on the check rows instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"onnxruntime\..*")
        yield


def _settings(method: str, calibration: dict[str, np.ndarray] | None) -> dict[str, Any]:
    if method == "dynamic":
        return {
            "weights": "int8, per tensor",
            "activations": "uint8, range taken per call",
            "reduce_range": REDUCE_RANGE,
        }
    rows = len(next(iter(calibration.values()))) if calibration else 0
    return {
        "weights": "int8, per channel",
        "activations": f"uint8, ranges calibrated (min-max) on {rows} training rows",
        "format": "QDQ",
        "reduce_range": REDUCE_RANGE,
    }


# --- measuring and choosing -------------------------------------------------------------------


def _runner(file: Path) -> Runner:
    return OnnxEngine(file, providers=["CPUExecutionProvider"]).raw


def _measure(
    float_runner: Runner, made: list[tuple[str, Path]], inputs: Inputs
) -> tuple[dict[int, float], list[Candidate]]:
    """The float model's milliseconds per call and every candidate's outputs and timings, each
    batch size timed for all of them in turn, on the same inputs."""
    runners = {method: _runner(file) for method, file in made}
    float_ms: dict[int, float] = {}
    ms: dict[str, dict[int, float]] = {method: {} for method in runners}
    for batch in LATENCY_BATCHES:
        rows, batch_inputs = timing_inputs(inputs.encoder, inputs.check, batch)
        float_ms[batch] = median_ms(float_runner, batch_inputs, repeats_for(rows))
        for method, run in runners.items():
            ms[method][batch] = median_ms(run, batch_inputs, repeats_for(rows))
    candidates = [
        Candidate(
            method,
            file,
            raw_outputs(runners[method], inputs.encoder, inputs.check, inputs.batch_size),
            ms[method],
        )
        for method, file in made
    ]
    return float_ms, candidates


def _choose(
    candidates: list[Candidate], inputs: Inputs, static: bool
) -> tuple[Candidate, str, dict[str, dict[str, Any]]]:
    """The candidate kept, why, and each candidate's metric against the float model."""
    from mlsmith.training.callbacks import resolve_mode

    compared = {
        c.method: metric_difference(
            inputs.task,
            inputs.truth,
            inputs.float_raw,
            c.raw,
            resamples=inputs.resamples,
            seed=inputs.seed,
        )
        for c in candidates
    }
    if not static:
        return (
            candidates[0],
            "dynamic: the graph has no convolutions; for matrix products (MLPs, bags, "
            "transformers) dynamic quantization is ONNX Runtime's standard, static was not tried",
            compared,
        )
    dynamic, calibrated = candidates
    # The two int8 models on the same rows: static minus dynamic, with its paired interval.
    versus = metric_difference(
        inputs.task,
        inputs.truth,
        dynamic.raw,
        calibrated.raw,
        resamples=inputs.resamples,
        seed=inputs.seed,
    )
    metric: str = versus["metric"]
    low, high = versus["ci95"]
    text = (
        f"{metric} static {_number(versus['variant'])} vs dynamic {_number(versus['base'])}, "
        f"difference {_number(versus['difference'])}, 95% interval "
        f"[{_number(low)}, {_number(high)}]"
    )
    if low is not None and high is not None and (low > 0 or high < 0):
        higher = high < 0 if resolve_mode(metric, "auto") == "min" else low > 0
        winner = calibrated if higher else dynamic
        return winner, f"{winner.method}: better {metric} ({text})", compared
    winner = min(candidates, key=lambda c: _typical_ms(c.ms))
    loser = calibrated if winner is dynamic else dynamic
    return (
        winner,
        f"{winner.method}: {metric} indistinguishable ({text}); {winner.method} is "
        f"{_typical_ms(loser.ms) / _typical_ms(winner.ms):.2f}x as fast as {loser.method} "
        "(geometric mean of the times at batch 1 and the large batch)",
        compared,
    )


def _speed_ratios(float_ms: dict[int, float], int8_ms: dict[int, float]) -> dict[str, float]:
    """Float milliseconds over int8 milliseconds per batch size: above 1, int8 is faster."""
    return {f"batch_{b}": round(float_ms[b] / max(int8_ms[b], 1e-9), 3) for b in LATENCY_BATCHES}


def _typical_ms(ms: dict[int, float]) -> float:
    """One figure for speed at both batch sizes: the geometric mean, so neither dominates."""
    return math.exp(sum(math.log(max(t, 1e-9)) for t in ms.values()) / len(ms))


def _max_abs_diff(inputs: Inputs, raw: np.ndarray) -> float:
    """Largest difference from the float model in what a user reads (probabilities, values)."""
    decode = inputs.task.decode
    return float(np.abs(decode(raw) - decode(inputs.float_raw)).max(initial=0.0))


def _number(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4g}"
