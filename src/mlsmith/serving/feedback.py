"""Live A/B metrics: what each variant answered, scored on the true labels sent back later.

The server records every answer under its request id (the live variant's, and the shadow's when
it has run); ``POST /v2/models/{name}/feedback`` brings the true labels, one per row of the
request, in order; ``GET /v2/models/{name}/ab`` and ``mlsmith monitor`` read :meth:`report`.

The store is a window over the most recent answers: at most ``capacity`` rows are held and the
oldest requests go first, so metrics describe recent traffic and memory stays bounded whatever
the uptime. Request counts are running totals and survive eviction; labels for an evicted
request are reported as unknown, as are labels for ids never seen.

Labels arrive as JSON values and are matched to the package's classes (``decoder.classes``) by
value first, then by text: ``"1"`` matches the class ``1``, ``1`` matches ``"1"``, ``1.0``
matches ``1`` and ``true`` / ``false`` match ``"true"`` / ``"false"``. A label matching no class
is an error, as is anything but a finite number for regression (``"3.5"`` included: text there
means the client sent the wrong field). A batch of labels is checked whole before any is stored.
"""

from __future__ import annotations

import copy
import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.evaluation import TASK_KINDS, evaluate_outputs
from mlsmith.runtime.outputs import predicted_classes

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FeedbackResult", "FeedbackStore"]

# What the A/B report shows per task, out of everything mlsmith.evaluation computes.
_CLASSIFICATION_METRICS = ("accuracy", "roc_auc")
_REGRESSION_METRICS = ("rmse", "mae")


@dataclass(frozen=True)
class FeedbackResult:
    """What one batch of labels matched: requests found, rows labelled, ids not held."""

    matched: int
    rows: int
    unknown: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the feedback endpoint's response."""
        return {"matched": self.matched, "rows": self.rows, "unknown": list(self.unknown)}


@dataclass
class _Answer:
    variant: str
    # Classification: probabilities (rows, C) in the order of the store's classes.
    # Regression: predicted values (rows,).
    outputs: np.ndarray


@dataclass
class _Entry:
    rows: int
    live: _Answer | None = None
    shadow: _Answer | None = None
    # Class indices (int64) or target values (float64), one per row; None until labelled.
    labels: np.ndarray | None = None


class FeedbackStore:
    """Answers per request id, the labels sent back for them, and per-variant live metrics.

    ``task`` is the package's ``decoder.kind`` (binary, multiclass or regression) and
    ``classes`` its ``decoder.classes`` (ignored for regression). ``capacity`` bounds the rows
    held. ``n_resamples`` and ``seed`` set the bootstrap behind the 95% intervals; a binary
    ``threshold`` decides labels as the package does. All methods are safe to call from several
    threads.
    """

    def __init__(
        self,
        task: str,
        classes: Sequence[Any] | None,
        capacity: int = 100_000,
        *,
        n_resamples: int = 1000,
        seed: int = 0,
        threshold: float | None = None,
    ) -> None:
        if task not in TASK_KINDS:
            raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASK_KINDS)}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 row, got {capacity}")
        self.task = task
        self.classes: list[Any] = [] if task == "regression" else list(classes or [])
        if task != "regression" and len(self.classes) < 2:
            raise ValueError(f"a {task} task needs at least two classes, got {self.classes}")
        self.capacity = capacity
        self.n_resamples = n_resamples
        self.seed = seed
        # A binary package's decision threshold: labels are scored as the package answers.
        self.threshold = threshold
        self._proba_columns = [f"proba_{c}" for c in self.classes]
        self._by_value: dict[Any, int] = {}
        self._by_text: dict[str, int] = {}
        for index, label in enumerate(self.classes):
            self._by_value.setdefault(label, index)
            self._by_text.setdefault(_label_text(label), index)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._rows_held = 0
        # Bumped whenever the labelled rows change; the metrics of the last report are reused
        # until then, since the bootstrap over a full window takes seconds.
        self._labels_version = 0
        self._scored: tuple[int, dict[str, dict[str, Any]], dict[str, Any]] | None = None
        self._answered: Counter[str] = Counter()
        self._shadow_answered: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Rows held now (at most ``capacity``)."""
        with self._lock:
            return self._rows_held

    def record(
        self, request_id: str, variant: str, outputs: pd.DataFrame, shadow: bool = False
    ) -> None:
        """Remember what ``variant`` answered to ``request_id``: ``outputs`` is the prediction
        table of that request's rows (``Package.predict``'s). A second live answer under the same
        id replaces the first (and its labels); live and shadow may arrive in either order.
        """
        self.record_array(request_id, variant, self._outputs_array(outputs), shadow)

    def record_array(
        self, request_id: str, variant: str, outputs: np.ndarray, shadow: bool = False
    ) -> None:
        """:meth:`record` with the answer already an array: the per-class probabilities
        (rows x classes) for classification, the values (rows,) for regression."""
        answer = _Answer(variant, np.array(outputs, dtype=np.float64))
        rows = len(answer.outputs)
        with self._lock:
            (self._shadow_answered if shadow else self._answered)[variant] += 1
            if rows == 0 or rows > self.capacity:
                return  # nothing to score, or more than the whole window
            entry = self._entries.get(request_id)
            if entry is not None and entry.rows != rows:
                if shadow:
                    return  # cannot be paired row by row with the live answer
                self._drop(request_id)
                entry = None
            elif entry is not None and not shadow and entry.live is not None:
                # A reused request id: the newer answer is the one its labels will be about.
                self._drop(request_id)
                entry = None
            if entry is None:
                entry = self._entries[request_id] = _Entry(rows)
                self._rows_held += rows
            if shadow:
                entry.shadow = answer
            else:
                entry.live = answer
            if entry.labels is not None:
                self._labels_version += 1
            while self._rows_held > self.capacity:
                self._drop(next(iter(self._entries)))

    def add_labels(self, request_ids: Sequence[str], labels: Sequence[Any]) -> FeedbackResult:
        """Attach true labels to recorded requests: ``labels[i]`` is the label of
        ``request_ids[i]``, a list with one label per row for a request of several rows.

        Ids not held (never seen, or evicted) are counted in the result, not an error. A label
        the task cannot use, or a list of the wrong length, raises ``ValueError`` naming it, and
        then none of the batch is stored.
        """
        if len(request_ids) != len(labels):
            raise ValueError(
                f"{len(request_ids)} request ids but {len(labels)} labels; "
                f"give one label (or one list of labels) per request id"
            )
        coerced = [
            (str(rid), self._coerce(str(rid), label))
            for rid, label in zip(request_ids, labels, strict=True)
        ]
        with self._lock:
            matched: list[tuple[_Entry, np.ndarray]] = []
            unknown: list[str] = []
            for rid, values in coerced:
                entry = self._entries.get(rid)
                if entry is None:
                    unknown.append(rid)
                elif len(values) != entry.rows:
                    raise ValueError(
                        f"request {rid!r} has {entry.rows} row(s) but {len(values)} label(s) "
                        f"were sent for it; send one label per row, in order"
                    )
                else:
                    matched.append((entry, values))
            for entry, values in matched:
                entry.labels = values
            self._labels_version += bool(matched)
        return FeedbackResult(len(matched), sum(len(v) for _, v in matched), tuple(unknown))

    def report(self) -> dict[str, Any]:
        """Per-variant counts and metrics with 95% bootstrap intervals, and the shadow's metrics
        and agreement with the live answers; JSON-ready (undefined numbers are ``None``).

        ``{"task", "capacity", "rows_held", "variants": {name: {"n_requests", "n_labelled",
        "metrics": {metric: {"value", "ci95"}}}}, "shadow": None | {"name", "n_requests",
        "n_labelled", "metrics", "agreement": {"n_rows", <measure>, "by_variant"}}}``, where the
        agreement measure is ``label_agreement`` (share of equal predicted classes) or
        ``mean_abs_difference`` (regression). Metrics are ``accuracy`` and ``roc_auc``
        (multiclass: macro one-vs-rest, left out unless every class has a label) or ``rmse`` and
        ``mae``, over the labelled rows held; a variant without labels has no metrics.
        """
        # Copy references under the lock and score outside it: the bootstrap can take a while
        # on a full window, and recording must not wait for it.
        with self._lock:
            entries = [(e.live, e.shadow, e.labels) for e in self._entries.values()]
            answered = dict(self._answered)
            shadow_answered = dict(self._shadow_answered)
            rows_held = self._rows_held
            version = self._labels_version
            scored = self._scored if self._scored and self._scored[0] == version else None

        live_labelled: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {
            name: ([], []) for name in answered
        }
        shadow_labelled: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
        paired: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        for live, shadow, labels in entries:
            if live is not None and labels is not None:
                ys, outs = live_labelled.setdefault(live.variant, ([], []))
                ys.append(labels)
                outs.append(live.outputs)
            if shadow is not None and labels is not None:
                shadow_labelled[0].append(labels)
                shadow_labelled[1].append(shadow.outputs)
            if live is not None and shadow is not None:
                pair = paired.setdefault(live.variant, ([], []))
                pair[0].append(live.outputs)
                pair[1].append(shadow.outputs)

        if scored is None:
            live_metrics = {name: self._metrics(*pair) for name, pair in live_labelled.items()}
            scored = (version, live_metrics, self._metrics(*shadow_labelled))
            with self._lock:
                self._scored = scored
        variants = {
            name: {
                "n_requests": answered.get(name, 0),
                "n_labelled": sum(len(y) for y in ys),
                # Copies: a caller editing its report must not edit the cached one.
                "metrics": copy.deepcopy(scored[1].get(name, {})),
            }
            for name, (ys, _) in live_labelled.items()
        }
        shadow_report: dict[str, Any] | None = None
        if shadow_answered:
            # One shadow per route; should several names appear, the latest speaks for them.
            shadow_report = {
                "name": list(shadow_answered)[-1],
                "n_requests": sum(shadow_answered.values()),
                "n_labelled": sum(len(y) for y in shadow_labelled[0]),
                "metrics": copy.deepcopy(scored[2]),
                "agreement": self._agreement(paired),
            }
        return {
            "task": self.task,
            "capacity": self.capacity,
            "rows_held": rows_held,
            "variants": variants,
            "shadow": shadow_report,
        }

    # --- internals ------------------------------------------------------------------------------

    def _drop(self, request_id: str) -> None:
        """Forget one request; the caller holds the lock."""
        entry = self._entries.pop(request_id)
        self._rows_held -= entry.rows
        if entry.labels is not None:
            self._labels_version += 1

    def _outputs_array(self, outputs: pd.DataFrame) -> np.ndarray:
        if self.task == "regression":
            if "prediction" not in outputs.columns:
                raise ValueError("regression outputs need a 'prediction' column")
            return outputs["prediction"].to_numpy(dtype=np.float64, copy=True)
        missing = [c for c in self._proba_columns if c not in outputs.columns]
        if missing:
            raise ValueError(
                f"{self.task} outputs need a probability column per class; "
                f"missing {', '.join(missing)} (have {', '.join(map(str, outputs.columns))})"
            )
        # Column by column: selecting a sub-frame first costs several times as much per request.
        return np.column_stack([outputs[c].to_numpy(dtype=np.float64) for c in self._proba_columns])

    def _coerce(self, request_id: str, label: Any) -> np.ndarray:
        """One request's label(s) to class indices or float values, one per row."""
        if isinstance(label, np.ndarray):
            label = label.tolist()
        values = list(label) if isinstance(label, (list, tuple)) else [label]
        if self.task == "regression":
            return np.array([self._number(request_id, v) for v in values], dtype=np.float64)
        return np.array([self._class_index(request_id, v) for v in values], dtype=np.int64)

    def _number(self, request_id: str, label: Any) -> float:
        if isinstance(label, np.generic):
            label = label.item()
        if isinstance(label, bool) or not isinstance(label, (int, float)):
            raise ValueError(
                f"label {label!r} for request {request_id!r} is not a number; "
                f"regression labels must be JSON numbers"
            )
        if not math.isfinite(label):
            raise ValueError(f"label {label!r} for request {request_id!r} is not finite")
        return float(label)

    def _class_index(self, request_id: str, label: Any) -> int:
        if isinstance(label, np.generic):
            label = label.item()
        index: int | None = None
        if isinstance(label, (str, int, float)):  # bool is an int
            # By value first (1.0 == 1 == True), then by text ("1" -> 1).
            index = self._by_value.get(label)
            if index is None:
                index = self._by_text.get(_label_text(label))
        if index is None:
            raise ValueError(
                f"label {label!r} for request {request_id!r} is not one of the classes "
                f"{self.classes}"
            )
        return index

    def _metrics(self, ys: list[np.ndarray], outs: list[np.ndarray]) -> dict[str, Any]:
        if not ys:
            return {}
        y = np.concatenate(ys)
        outputs = np.concatenate(outs)
        full = evaluate_outputs(
            self.task,
            y,
            outputs,
            n_resamples=self.n_resamples,
            seed=self.seed,
            threshold=self.threshold,
        )
        if self.task == "regression":
            return {name: full[name] for name in _REGRESSION_METRICS}
        names = list(_CLASSIFICATION_METRICS)
        # mlsmith.evaluation averages ROC-AUC over the classes present; a macro AUC missing a
        # class would not be comparable between variants, so it waits until all have labels.
        if len(np.unique(y)) < len(self.classes):
            names.remove("roc_auc")
        return {name: full[name] for name in names}

    def _agreement(
        self, paired: dict[str, tuple[list[np.ndarray], list[np.ndarray]]]
    ) -> dict[str, Any]:
        measure = "mean_abs_difference" if self.task == "regression" else "label_agreement"

        def agree(live: list[np.ndarray], shadow: list[np.ndarray]) -> dict[str, Any]:
            if not live:
                return {"n_rows": 0, measure: None}
            a, b = np.concatenate(live), np.concatenate(shadow)
            if self.task == "regression":
                value = float(np.abs(a - b).mean())
            else:
                labels = predicted_classes(a, self.threshold), predicted_classes(b, self.threshold)
                value = float((labels[0] == labels[1]).mean())
            return {"n_rows": len(a), measure: value if math.isfinite(value) else None}

        overall = agree(
            [x for live, _ in paired.values() for x in live],
            [x for _, shadow in paired.values() for x in shadow],
        )
        overall["by_variant"] = {name: agree(*pair) for name, pair in paired.items()}
        return overall


def _label_text(label: Any) -> str:
    """The text a label is matched by when its value matches no class (see the module doc)."""
    if isinstance(label, bool):
        return "true" if label else "false"
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label)
