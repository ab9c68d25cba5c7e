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


def predicted_classes(probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Class index of each row: the most probable one, or with a ``threshold`` (two classes
    only) the positive class (index 1) where its probability is >= the threshold."""
    if threshold is not None and probabilities.shape[1] == 2:
        return (probabilities[:, 1] >= threshold).astype(np.int64)
    return probabilities.argmax(axis=1)


def class_labels(
    classes: Sequence[Any], probabilities: np.ndarray, threshold: float | None = None
) -> np.ndarray:
    """The predicted class of each row (see :func:`predicted_classes`), in the target's original
    values."""
    return np.asarray(classes, dtype=object)[predicted_classes(probabilities, threshold)]


def ranks_within(scores: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Each row's rank within its query (``groups``; None: one query): 1 for the highest score,
    tied scores in input order (as the ranking metrics break ties)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = len(scores)
    codes = (
        np.zeros(n, dtype=np.int64)
        if groups is None
        else np.unique(np.asarray(groups).astype(str), return_inverse=True)[1].reshape(-1)
    )
    # By query, then by descending score, then by input position.
    order = np.lexsort((np.arange(n), -scores, codes))
    starts = np.r_[0, np.flatnonzero(np.diff(codes[order])) + 1]
    within = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = within + 1
    return ranks


def ranking_frame(scores: np.ndarray, groups: np.ndarray | None = None) -> pd.DataFrame:
    """A ranking's prediction table: ``score`` and ``rank`` within each query (see
    :func:`ranks_within`)."""
    import pandas as pd

    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    return pd.DataFrame({"score": scores, "rank": ranks_within(scores, groups)})


class Decoder:
    """A task as saved in ``preprocessing.json`` (``kind`` and ``classes`` or ``mean``/``std``,
    and a binary task's decision ``threshold`` when one was set), reading raw outputs."""

    def __init__(self, task: Mapping[str, Any]) -> None:
        self.kind: str = task["kind"]
        self.classes: list[Any] = list(task.get("classes", []))
        threshold = task.get("threshold") if self.kind == "binary" else None
        self.threshold: float | None = None if threshold is None else float(threshold)
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

    def frame(self, raw: np.ndarray, groups: np.ndarray | None = None) -> pd.DataFrame:
        """Raw outputs to the prediction table (see :func:`output_frame`); a ranking's is
        :func:`ranking_frame`, ranked within ``groups`` (None: the rows are one query's)."""
        if self.kind == "ranking":
            return ranking_frame(self.decoded(raw), groups)
        return output_frame(self.classes, self.decoded(raw), self.threshold)

    def empty(self) -> np.ndarray:
        return np.zeros((0, len(self.classes)) if self.classes else 0)


def output_frame(
    classes: Sequence[Any], decoded: np.ndarray, threshold: float | None = None
) -> pd.DataFrame:
    """``prediction`` (original labels or values) and, for classes, ``proba_<class>`` columns;
    a binary ``threshold`` decides the predicted label (see :func:`predicted_classes`)."""
    import pandas as pd

    if not classes:
        return pd.DataFrame({"prediction": decoded})
    columns: dict[str, np.ndarray] = {"prediction": class_labels(classes, decoded, threshold)}
    for i, label in enumerate(classes):
        columns[f"proba_{label}"] = decoded[:, i]
    return pd.DataFrame(columns)
