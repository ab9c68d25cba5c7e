"""Raw network or booster outputs to what a user reads: probabilities, labels, values.

Training decodes validation outputs with these functions and ``mlsmith predict`` and every
package build their output table with :func:`output_frame`, so a package's predictions are
``mlsmith predict``'s, column for column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def binary_probabilities(raw: np.ndarray) -> np.ndarray:
    """One logit per row to (n, 2) probabilities, the second class the positive one."""
    logits = raw.reshape(len(raw), -1)[:, 0].astype(np.float64)
    positive = 1.0 / (1.0 + np.exp(-logits))
    return np.stack([1.0 - positive, positive], axis=1)


def softmax(raw: np.ndarray) -> np.ndarray:
    """C logits per row to (n, C) probabilities (computed in float64, shifted for stability)."""
    logits = raw.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def unstandardise(raw: np.ndarray, mean: float, std: float) -> np.ndarray:
    """The standardised regression output back in the target's units, (n,)."""
    return raw.reshape(len(raw), -1)[:, 0].astype(np.float64) * std + mean


def class_labels(classes: Sequence[Any], probabilities: np.ndarray) -> np.ndarray:
    """The most probable class of each row, in the target's original values."""
    return np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)]


class Decoder:
    """A task as saved in ``preprocessing.json`` (``kind`` and ``classes`` or ``mean``/``std``),
    reading raw outputs."""

    def __init__(self, task: Mapping[str, Any]) -> None:
        self.kind: str = task["kind"]
        self.classes: list[Any] = list(task.get("classes", []))
        self.mean = float(task.get("mean", 0.0))
        self.std = float(task.get("std", 1.0))

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.kind == "multiclass" else 1

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """Raw outputs (n, n_outputs) to probabilities (n, C) or values (n,)."""
        if self.kind == "binary":
            return binary_probabilities(raw)
        if self.kind == "multiclass":
            return softmax(raw)
        return unstandardise(raw, self.mean, self.std)

    def decoded(self, raw: np.ndarray) -> np.ndarray:
        """:meth:`decode`, with the right empty shape for no rows."""
        return self.decode(raw) if len(raw) else self.empty()

    def frame(self, raw: np.ndarray) -> pd.DataFrame:
        """Raw outputs to the prediction table (see :func:`output_frame`)."""
        return output_frame(self.classes, self.decoded(raw))

    def empty(self) -> np.ndarray:
        return np.zeros((0, len(self.classes)) if self.classes else 0)


def output_frame(classes: Sequence[Any], decoded: np.ndarray) -> pd.DataFrame:
    """``prediction`` (original labels or values) and, for classes, ``proba_<class>`` columns."""
    import pandas as pd

    if not classes:
        return pd.DataFrame({"prediction": decoded})
    columns: dict[str, np.ndarray] = {"prediction": class_labels(classes, decoded)}
    for i, label in enumerate(classes):
        columns[f"proba_{label}"] = decoded[:, i]
    return pd.DataFrame(columns)
