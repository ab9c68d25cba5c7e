"""What is being predicted: the target's encoding, the loss, and how raw outputs are read.

A task is fitted from the labelled data (class list, or the target's mean and standard deviation
on the training split) and saved with the run as JSON, so prediction decodes outputs exactly as
training encoded targets.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mlsmith.columns import numbers_as_text
from mlsmith.errors import DataError
from mlsmith.losses import LossOptions, binary_loss, multiclass_loss
from mlsmith.runtime import outputs

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd
    import torch

log = logging.getLogger(__name__)

# Integer targets with at most this many distinct values are read as classes, not quantities.
MAX_AUTO_CLASSES = 20


class Task(ABC):
    """Base for the supervised tasks: binary, multiclass, regression and ranking."""

    kind: ClassVar[str]
    # Labels in output order for classification; empty for regression.
    classes: list[Any] = []  # noqa: RUF012 (overridden per instance, never mutated)
    # Binary only: the positive class is predicted when its probability is >= this; None: the
    # most probable class (argmax). Saved with the task, so prediction and packages use it.
    threshold: float | None = None

    @property
    @abstractmethod
    def n_outputs(self) -> int:
        """Width of the model's last layer."""

    @abstractmethod
    def encode(self, target: pd.Series) -> np.ndarray:
        """Raw target values to what the loss expects (float32 or int64)."""

    @abstractmethod
    def truth(self, encoded: np.ndarray) -> np.ndarray:
        """Encoded targets to what metrics expect: class indices or original-scale values."""

    # train.loss given as a path: your function (output, target) -> loss, used instead of the
    # task's own (set by mlsmith.imbalance.configure_task; never saved with the task).
    custom_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss *averaged* over the batch, as a plain loop would compute it: the task's own
        (:meth:`builtin_loss`), or ``train.loss``'s function when one is set.

        The trainer weights micro-batches by their share of the optimizer step, so with
        accumulation (or a partial batch) every sample still counts equally.
        """
        if self.custom_loss is not None:
            return self.custom_loss(output, target)
        return self.builtin_loss(output, target)

    @abstractmethod
    def builtin_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The task's own loss, averaged over the batch."""

    def output_shape(self, inputs: dict[str, torch.Tensor], batch_size: int) -> tuple[int, ...]:
        """The shape of the network's raw outputs for a training batch."""
        return (batch_size, self.n_outputs)

    @abstractmethod
    def decode(self, raw: np.ndarray) -> np.ndarray:
        """Raw model outputs (n, n_outputs) to probabilities (n, C) or values (n,)."""

    @abstractmethod
    def labels(self, decoded: np.ndarray) -> np.ndarray:
        """Decoded outputs to predicted labels in the target's original values."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state; :func:`task_from_dict` reverses it."""

    @property
    def is_classification(self) -> bool:
        return self.kind in ("binary", "multiclass")

    @property
    def metric_names(self) -> tuple[str, ...]:
        from mlsmith import evaluation

        if self.is_classification:
            return evaluation.classification_metric_names(len(self.classes))
        return evaluation.REGRESSION_METRICS

    def metrics(
        self, truth: np.ndarray, decoded: np.ndarray, groups: np.ndarray | None = None
    ) -> dict[str, float]:
        """Point metrics (no intervals) for per-epoch validation; ``groups``: each row's query
        (a ranking task's metrics are per query; the other tasks ignore it)."""
        from mlsmith import evaluation

        return evaluation.point_metrics(self.kind, truth, decoded, threshold=self.threshold)


class ClassificationTask(Task):
    def __init__(self, classes: list[Any]) -> None:
        self.classes = list(classes)
        self._index = {label_key(c): i for i, c in enumerate(self.classes)}
        # How the training loss treats imbalance (class weights, focal, smoothing): a training
        # setting, set from the config by mlsmith.imbalance, not saved with the task.
        self.loss_options = LossOptions()

    def class_index(self, label: Any) -> int | None:
        """The output index of ``label`` (compared by its text, as the data's labels are)."""
        return self._index.get(label_key(label))

    def encode(self, target: pd.Series) -> np.ndarray:
        keys = [label_key(v) for v in target.tolist()]
        unknown = sorted({k for k in keys if k not in self._index})
        if unknown:
            raise DataError(
                f"target '{target.name}' has labels not seen in the training data: "
                f"{', '.join(map(str, unknown[:10]))}; known labels: "
                f"{', '.join(map(str, self.classes))}"
            )
        return np.fromiter((self._index[k] for k in keys), dtype=np.int64, count=len(keys))

    def truth(self, encoded: np.ndarray) -> np.ndarray:
        return encoded.astype(np.int64)

    def absent_classes(self, target: pd.Series) -> list[Any]:
        """Classes with no row in ``target``."""
        present = {label_key(v) for v in target.unique()}
        return [c for c in self.classes if label_key(c) not in present]

    def labels(self, decoded: np.ndarray) -> np.ndarray:
        return outputs.class_labels(self.classes, decoded, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"kind": self.kind, "classes": self.classes}
        if self.threshold is not None:
            state["threshold"] = self.threshold
        return state


class BinaryTask(ClassificationTask):
    """Two classes; one logit, the second class (in sorted order) is the positive one."""

    kind = "binary"

    @property
    def n_outputs(self) -> int:
        return 1

    def encode(self, target: pd.Series) -> np.ndarray:
        return super().encode(target).astype(np.float32)

    def builtin_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self.loss_options.is_plain:
            return binary_loss(output, target, self.loss_options)
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(output.float().squeeze(-1), target)

    def decode(self, raw: np.ndarray) -> np.ndarray:
        return outputs.binary_probabilities(raw)


class MulticlassTask(ClassificationTask):
    kind = "multiclass"

    @property
    def n_outputs(self) -> int:
        return len(self.classes)

    def builtin_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self.loss_options.is_plain:
            return multiclass_loss(output, target, self.loss_options)
        import torch.nn.functional as F

        return F.cross_entropy(output.float(), target)

    def decode(self, raw: np.ndarray) -> np.ndarray:
        return outputs.softmax(raw)


class RegressionTask(Task):
    """The network predicts the standardized target; decoding restores the original units."""

    kind = "regression"

    def __init__(self, mean: float, std: float) -> None:
        self.mean = float(mean)
        self.std = float(std) if std > 0 and math.isfinite(std) else 1.0

    @property
    def n_outputs(self) -> int:
        return 1

    def encode(self, target: pd.Series) -> np.ndarray:
        import pandas as pd

        values = pd.to_numeric(target, errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(values).any():
            bad = target[np.isnan(values)].iloc[0]
            raise DataError(f"regression target '{target.name}' has a non-numeric value: {bad!r}")
        if np.isinf(values).any():
            row = int(np.flatnonzero(np.isinf(values))[0])
            raise DataError(
                f"regression target '{target.name}' has an infinite value: "
                f"{float(values[row])!r} (row {row})"
            )
        return ((values - self.mean) / self.std).astype(np.float32)

    def truth(self, encoded: np.ndarray) -> np.ndarray:
        return encoded.astype(np.float64) * self.std + self.mean

    def builtin_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.mse_loss(output.float().squeeze(-1), target)

    def decode(self, raw: np.ndarray) -> np.ndarray:
        return outputs.unstandardise(raw, self.mean, self.std)

    def labels(self, decoded: np.ndarray) -> np.ndarray:
        return decoded

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": self.mean, "std": self.std}


class RankingTask(Task):
    """Learning to rank: graded relevance labels (0, 1, 2...), one score per item, and metrics
    over the items of each query (``data.group_column``). Scores are only ever compared within
    a query, so they are left on the model's own scale."""

    kind = "ranking"

    def __init__(self, ks: list[int] | tuple[int, ...] = (1, 5, 10)) -> None:
        self.ks = [int(k) for k in ks]

    @property
    def n_outputs(self) -> int:
        return 1

    @property
    def metric_names(self) -> tuple[str, ...]:
        from mlsmith.ranking_metrics import metric_names

        return metric_names(self.ks)

    def encode(self, target: pd.Series) -> np.ndarray:
        values = relevance_labels(target, str(target.name))
        return values.astype(np.float32)

    def truth(self, encoded: np.ndarray) -> np.ndarray:
        return encoded.astype(np.float64)

    def builtin_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The listwise loss (:func:`mlsmith.losses.listwise_loss`). ``target`` is the ranking
        batches' ``[relevance, query]`` per row; a plain relevance vector is one query."""
        from mlsmith.losses import listwise_loss

        if target.ndim == 2:
            return listwise_loss(output, target[:, 0], target[:, 1])
        return listwise_loss(output, target, target.new_zeros(target.shape))

    def decode(self, raw: np.ndarray) -> np.ndarray:
        return np.asarray(raw, dtype=np.float64).reshape(len(raw), -1)[:, 0]

    def labels(self, decoded: np.ndarray) -> np.ndarray:
        return decoded

    def metrics(
        self, truth: np.ndarray, decoded: np.ndarray, groups: np.ndarray | None = None
    ) -> dict[str, float]:
        from mlsmith.ranking_metrics import ranking_metrics

        if groups is None and truth.ndim == 2:  # the ranking batches' [relevance, query]
            truth, groups = truth[:, 0], truth[:, 1]
        if groups is None:
            raise ValueError("ranking metrics need each row's query (groups)")
        return ranking_metrics(truth, decoded, groups, self.ks)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "ks": self.ks}


# LightGBM's lambdarank gains are 2**label - 1 for labels 0..30 (its default label_gain).
MAX_RELEVANCE = 30


def relevance_labels(target: pd.Series, source: str) -> np.ndarray:
    """A ranking target as integer relevance grades 0..30; a DataError names the first bad one."""
    import pandas as pd

    values = pd.to_numeric(target, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(values) | (values < 0) | (values > MAX_RELEVANCE) | (values != np.round(values))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{source}: ranking target '{target.name}' holds {target.iloc[row]!r} (row "
            f"{target.index[row]}); relevance must be a whole number from 0 (not relevant) to "
            f"{MAX_RELEVANCE}"
        )
    return values.astype(np.int64)


def infer_task(target: pd.Series, requested: str, source: str) -> str:
    """Pick binary / multiclass / regression for ``target`` (already without missing values)."""
    import pandas as pd

    if requested == "ranking":
        relevance_labels(target, source)
        return requested
    n_unique = target.nunique()
    if pd.api.types.is_object_dtype(target):
        # Count labels as encode() tells them apart: 1 and "1" (files typed differently) are one.
        n_unique = len({label_key(v) for v in target.unique()})
    _refuse_numbers_as_text(target, requested, source)
    if requested != "auto":
        kind = requested
    elif (
        pd.api.types.is_bool_dtype(target)
        or not pd.api.types.is_numeric_dtype(target)
        or (_all_integral(target) and n_unique <= MAX_AUTO_CLASSES)
    ):
        kind = "binary" if n_unique == 2 else "multiclass"
    else:
        kind = "regression"
    if kind != "regression" and n_unique < 2:
        raise DataError(
            f"{source}: target '{target.name}' has a single class ({target.iloc[0]!r}); "
            "classification needs at least two"
        )
    if kind == "binary" and n_unique != 2:
        raise DataError(
            f"{source}: task 'binary' needs exactly 2 classes in '{target.name}', found {n_unique}"
        )
    if kind == "regression" and not pd.api.types.is_numeric_dtype(target):
        raise DataError(
            f"{source}: task 'regression' needs a numeric target, '{target.name}' holds "
            f"{target.dtype} values such as {target.iloc[0]!r}"
        )
    if requested == "auto":
        log.info("task inferred from '%s': %s (%d distinct values)", target.name, kind, n_unique)
    return kind


def _refuse_numbers_as_text(target: pd.Series, requested: str, source: str) -> None:
    """A numeric target with a few stray strings ('?', 'unknown') is read as text, and would
    become a classification with one class per number: stop and say which strings."""
    if requested not in ("auto", "regression"):
        return
    found = numbers_as_text(target)
    if found is None:
        return
    if requested == "auto":
        import pandas as pd

        numbers = pd.to_numeric(target, errors="coerce").dropna()
        # Integer labels stored as text ('0', '1', '2' and a stray 'x') are classes, as their
        # numbers would be: only a target whose numbers read as a quantity is refused.
        if _all_integral(numbers) and numbers.nunique() <= MAX_AUTO_CLASSES:
            return
    also = ", or set data.task=multiclass if the numbers really are class labels"
    raise DataError(
        f"{source}: target '{target.name}' looks numeric but is read as text: "
        f"{found.describe()}; clean those values, or add them to data.na_values to read them as "
        f"missing (such rows are dropped){also if requested == 'auto' else ''}"
    )


def fit_task(
    kind: str, labelled: pd.Series, train_target: pd.Series, *, ks: list[int] | None = None
) -> Task:
    """Build the task: classes from every labelled row, target scale from the training split;
    ``ks``: a ranking task's NDCG cut-offs (``eval.ndcg_at``)."""
    if kind == "ranking":
        return RankingTask(ks or [1, 5, 10])
    if kind == "regression":
        values = train_target.astype(float)
        return RegressionTask(values.mean(), values.std(ddof=0))
    # One class per label key, so 1 and "1" from differently typed files are one class.
    unique: dict[str, Any] = {}
    for value in labelled.tolist():
        unique.setdefault(label_key(value), _python_scalar(value))
    classes = sorted(unique.values(), key=_sort_key)
    return BinaryTask(classes) if kind == "binary" else MulticlassTask(classes)


def task_from_dict(state: dict[str, Any]) -> Task:
    kind = state["kind"]
    if kind == "regression":
        return RegressionTask(state["mean"], state["std"])
    if kind == "ranking":
        return RankingTask(state["ks"])
    task = (BinaryTask if kind == "binary" else MulticlassTask)(state["classes"])
    if kind == "binary" and state.get("threshold") is not None:
        task.threshold = float(state["threshold"])
    return task


def _all_integral(values: pd.Series) -> bool:
    array = values.to_numpy(dtype=np.float64)
    return bool(np.all(np.isfinite(array)) and np.all(array == np.round(array)))


def _python_scalar(value: Any) -> Any:
    """numpy scalars to plain Python, integral floats to int, so labels survive JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def label_key(value: Any) -> str:
    # Labels compare by their text so 1, 1.0 and "1" (CSV chunks may type them differently) agree.
    return str(_python_scalar(value))


def _sort_key(value: Any) -> tuple[int, Any]:
    return (
        (0, value)
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        else (
            1,
            str(value),
        )
    )
