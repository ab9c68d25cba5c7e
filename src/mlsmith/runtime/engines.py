"""What computes raw outputs from encoded inputs inside a package: ONNX Runtime for networks,
the boosting library's own booster for trees.

Every engine takes the encoded inputs of a batch of rows (the names the data kind's encoder
produces) and returns float raw outputs (n, n_outputs), exactly what training decoded.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import MissingExtraError


class Engine(Protocol):
    """Raw outputs for encoded rows."""

    def raw(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


def feature_matrix(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Tabular inputs to one float32 matrix for trees: numerics, then categorical codes."""
    numeric = inputs["numeric"].astype(np.float32)  # (n, n_numeric)
    # Codes are small integers, exact in float32.
    codes = inputs["categorical"].astype(np.float32)  # (n, n_categorical)
    return np.hstack([numeric, codes])


def import_library(package: str, extra: str, purpose: str) -> Any:
    """An optional library, or a MissingExtraError naming the install."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise MissingExtraError(package, extra, purpose) from None


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class OnnxEngine:
    """An exported network run by ONNX Runtime (CUDA when onnxruntime-gpu finds a GPU)."""

    def __init__(self, file: Path, *, providers: list[str] | None = None) -> None:
        ort = import_library("onnxruntime", "export", "Running an ONNX model")
        options = ort.SessionOptions()
        # Thread spinning burns CPU between requests; a server's batches come in bursts.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        chosen = providers or [
            p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available
        ]
        self.session = ort.InferenceSession(str(file), options, providers=chosen)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def raw(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: inputs[name] for name in self.input_names}
        (output,) = self.session.run(None, feed)
        return np.asarray(output, dtype=np.float32)


class LightGBMEngine:
    """A LightGBM booster from its model file (text), predicting raw scores."""

    def __init__(self, file: Path, *, n_outputs: int) -> None:
        lgb = import_library("lightgbm", "trees", "A LightGBM model")
        self.booster = lgb.Booster(model_str=Path(file).read_text())
        self.n_outputs = n_outputs

    def raw(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        x = feature_matrix(inputs)
        rounds = self.booster.current_iteration()
        raw = self.booster.predict(x, num_iteration=rounds, raw_score=True)
        return np.asarray(raw, dtype=np.float64).reshape(len(x), self.n_outputs)


class XGBoostEngine:
    """An XGBoost booster from its model file (JSON), predicting margins."""

    def __init__(self, file: Path, *, n_outputs: int, n_numeric: int, n_categorical: int) -> None:
        self.xgb = import_library("xgboost", "trees", "An XGBoost model")
        self.booster = self.xgb.Booster()
        self.booster.load_model(bytearray(Path(file).read_bytes()))
        self.booster.set_param({"nthread": available_cores()})
        self.n_outputs = n_outputs
        self.types = ["q"] * n_numeric + ["c"] * n_categorical

    def raw(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        x = feature_matrix(inputs)
        matrix = self.xgb.DMatrix(x, feature_types=self.types, enable_categorical=True)
        margin = self.booster.predict(matrix, output_margin=True, iteration_range=(0, 0))
        return np.asarray(margin, dtype=np.float64).reshape(len(x), self.n_outputs)
