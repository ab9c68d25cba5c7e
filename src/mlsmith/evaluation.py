"""Evaluation metrics with percentile-bootstrap confidence intervals.

Point values come straight from scikit-learn. Intervals come from a vectorised bootstrap: a
resample is the same thing as integer multiplicity weights over the original rows, so a block of
resamples is a weight matrix ``W`` of shape ``(b, n)`` and every metric is re-implemented as a
weighted computation over ``W`` (matrix products and cumulative sums, no loop over resamples).
With ``W = ones((1, n))`` the weighted versions reproduce scikit-learn's values.

Conventions for undefined metrics, which must never raise because test sets can be tiny:

* ROC-AUC and PR-AUC are computed one-vs-rest on the positive column (binary, or any two-column
  ``proba``) or on every class present in ``y_true`` (multiclass), then macro-averaged over the
  classes where they are defined. ROC-AUC is undefined for a class without positives or without
  negatives, PR-AUC for a class without positives. scikit-learn's own multiclass ROC-AUC returns
  NaN as soon as one class is absent; averaging over present classes gives the same value when
  every class is present and a usable one otherwise. The same rule applies inside each resample.
* ``r2`` is NaN when ``y_true`` is constant (scikit-learn returns 0, 1, or a huge number caused by
  rounding in that case).
* A metric undefined everywhere is NaN; :func:`evaluate_outputs` turns NaN into ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_absolute_percentage_error,
    mean_squared_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
    top_k_accuracy_score,
)

from mlsmith.runtime.outputs import predicted_classes

CLASSIFICATION_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "f1_weighted",
    "roc_auc",
    "pr_auc",
    "log_loss",
)
REGRESSION_METRICS: tuple[str, ...] = ("mse", "rmse", "mae", "r2", "mape")
# Top-5 accuracy is reported only with more than this many classes (else it is always 1).
TOP_K = 5


def classification_metric_names(n_classes: int) -> tuple[str, ...]:
    """:data:`CLASSIFICATION_METRICS`, plus ``top5_accuracy`` when there are more than 5 classes."""
    return CLASSIFICATION_METRICS + (("top5_accuracy",) if n_classes > TOP_K else ())


TASK_KINDS: tuple[str, ...] = ("binary", "multiclass", "regression")

# Upper bound on b * n per block of resamples: the float64 weight matrix and its few temporaries
# stay in the tens of megabytes, whatever the number of rows.
_BLOCK_ELEMENTS = 2**21
# The clipping scikit-learn applies to probabilities in log_loss (and the floor of MAPE).
_EPS = float(np.finfo(np.float64).eps)

_WeightedMetrics = Callable[[np.ndarray], dict[str, np.ndarray]]


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, threshold: float | None = None
) -> dict[str, float]:
    """Every metric in :data:`CLASSIFICATION_METRICS` for class indices and probabilities.

    ``y_true`` holds class indices in ``[0, C)``, ``proba`` is ``(n, C)`` with rows summing to 1;
    with ``C == 2`` the positive class is index 1. The predicted class is ``argmax(proba)``, or
    with a ``threshold`` (two classes) the positive one where ``proba[:, 1] >= threshold``; the
    ranking metrics (ROC-AUC, PR-AUC) and log loss read the probabilities either way.
    Metrics that are undefined for this sample (see the module docstring) are NaN.
    """
    y, proba = _check_classification(y_true, proba)
    n_classes = proba.shape[1]
    labels = np.arange(n_classes)
    pred = predicted_classes(proba, threshold)
    prf = {"labels": labels, "zero_division": 0}
    # balanced_accuracy_score is exactly this (mean recall over the classes present in y_true),
    # but it warns on the absent classes and single-class sets that small samples produce.
    balanced = recall_score(y, pred, labels=np.unique(y), average="macro", zero_division=0)
    roc: list[float] = []
    ap: list[float] = []
    for k in _ranked_columns(y, n_classes):
        positive = y == k
        n_pos = int(positive.sum())
        roc.append(roc_auc_score(positive, proba[:, k]) if 0 < n_pos < len(y) else math.nan)
        ap.append(average_precision_score(positive, proba[:, k]) if n_pos else math.nan)
    values = {
        "accuracy": accuracy_score(y, pred),
        "balanced_accuracy": balanced,
        "precision_macro": precision_score(y, pred, average="macro", **prf),
        "recall_macro": recall_score(y, pred, average="macro", **prf),
        "f1_macro": f1_score(y, pred, average="macro", **prf),
        "f1_weighted": f1_score(y, pred, average="weighted", **prf),
        "roc_auc": mean_defined(np.array([roc]))[0],
        "pr_auc": mean_defined(np.array([ap]))[0],
        "log_loss": log_loss(y, proba, labels=labels),
    }
    if n_classes > TOP_K:
        values["top5_accuracy"] = top_k_accuracy_score(y, proba, k=TOP_K, labels=labels)
    return {name: float(values[name]) for name in classification_metric_names(n_classes)}


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Every metric in :data:`REGRESSION_METRICS`; ``mape`` is a fraction, not a percentage.

    ``r2`` is NaN when ``y_true`` is constant.
    """
    y, pred = _check_regression(y_true, y_pred)
    mse = mean_squared_error(y, pred)
    values = {
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": mean_absolute_error(y, pred),
        "r2": r2_score(y, pred) if np.ptp(y) > 0 else math.nan,
        "mape": mean_absolute_percentage_error(y, pred),
    }
    return {name: float(values[name]) for name in REGRESSION_METRICS}


def point_metrics(
    kind: str, y_true: np.ndarray, outputs: np.ndarray, *, threshold: float | None = None
) -> dict[str, float]:
    """Every metric of ``kind`` from the vectorised implementation, for per-epoch validation.

    Equal to :func:`classification_metrics` / :func:`regression_metrics` up to float rounding,
    but 10-50x faster: scikit-learn's per-call input validation would otherwise cost a training
    loop several percent of its throughput on small epochs.
    """
    values = _weighted_metric_fn(kind, y_true, outputs, threshold)(np.ones((1, len(y_true))))
    if kind == "regression":
        names = REGRESSION_METRICS
    else:
        names = classification_metric_names(np.asarray(outputs).shape[1])
    return {name: float(values[name][0]) for name in names}


def confusion(
    y_true: np.ndarray, proba: np.ndarray, threshold: float | None = None
) -> list[list[int]]:
    """Confusion matrix over all ``C`` classes; rows are true classes, columns predicted ones
    (argmax, or the binary ``threshold``)."""
    y, proba = _check_classification(y_true, proba)
    pred = predicted_classes(proba, threshold)
    matrix = confusion_matrix(y, pred, labels=np.arange(proba.shape[1]))
    return matrix.tolist()


def choose_threshold(
    y_true: np.ndarray, positive: np.ndarray, objective: str, target_recall: float = 0.9
) -> float | None:
    """The decision threshold on the positive class's probability that best meets ``objective``.

    ``y_true`` holds 0 / 1, ``positive`` the positive class's probabilities; a row is predicted
    positive when its probability is >= the threshold, so the candidates are the probabilities
    themselves. ``f1``: the threshold with the highest F1 (the highest one among ties);
    ``recall``: the highest threshold whose recall reaches ``target_recall``. None when there
    is no positive row to choose on.
    """
    y = np.asarray(y_true).astype(bool)
    scores = np.asarray(positive, dtype=np.float64)
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], y[order]
    # Threshold at a score keeps every row scoring at or above it: the last row of each run of
    # equal scores holds the counts for that threshold.
    last = np.flatnonzero(np.append(np.diff(sorted_scores) != 0, True))
    tp = np.cumsum(hits)[last]
    kept = last + 1
    candidates = sorted_scores[last]
    if objective == "recall":
        reached = np.flatnonzero(tp >= target_recall * n_pos - 1e-12)
        return float(candidates[reached[0]])
    f1 = 2.0 * tp / (kept + n_pos)  # 2 tp / (2 tp + fp + fn), with tp + fp = kept
    return float(candidates[int(np.argmax(f1))])


def bootstrap_cis(
    kind: str,
    y_true: np.ndarray,
    outputs: np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    threshold: float | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap confidence intervals for every metric of ``kind``.

    ``outputs`` is ``proba`` for classification and ``y_pred`` for regression. Resamples where a
    metric is undefined are ignored; a metric undefined in every resample gets ``(nan, nan)``.
    The same ``seed`` (and data) always gives the same intervals.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    metric_fn = _weighted_metric_fn(kind, y_true, outputs, threshold)
    parts = [metric_fn(w) for w in resample_weights(len(y_true), n_resamples, seed)]
    tail = 100.0 * (1.0 - confidence) / 2.0
    cis: dict[str, tuple[float, float]] = {}
    for name in parts[0]:
        values = np.concatenate([part[name] for part in parts])
        if np.isnan(values).all():
            cis[name] = (math.nan, math.nan)
        else:
            low, high = np.nanpercentile(values, [tail, 100.0 - tail])
            cis[name] = (float(low), float(high))
    return cis


def paired_differences(
    kind: str,
    y_true: np.ndarray,
    outputs_a: np.ndarray,
    outputs_b: np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    thresholds: tuple[float | None, float | None] = (None, None),
) -> dict[str, dict[str, float | list[float | None] | None]]:
    """Every metric of ``kind`` for two models' outputs on the same rows, ready for JSON:
    ``{metric: {"value": a - b, "ci95": [low, high], "a": a, "b": b}}``.

    The interval is the paired percentile bootstrap: both are scored on each resample, so
    what the rows share cancels out. Undefined numbers are ``None``; without resamples the
    interval is left out. ``thresholds``: each one's binary decision threshold (None: argmax).
    """
    metric_a = _weighted_metric_fn(kind, y_true, outputs_a, thresholds[0])
    metric_b = _weighted_metric_fn(kind, y_true, outputs_b, thresholds[1])
    whole = np.ones((1, len(y_true)))
    point_a, point_b = metric_a(whole), metric_b(whole)
    parts: list[dict[str, np.ndarray]] = []
    for w in resample_weights(len(y_true), n_resamples, seed) if n_resamples > 0 else ():
        scored_a, scored_b = metric_a(w), metric_b(w)
        parts.append({name: scored_a[name] - scored_b[name] for name in scored_a})
    tail = 100.0 * (1.0 - confidence) / 2.0
    report: dict[str, dict[str, float | list[float | None] | None]] = {}
    for name in point_a:
        a, b = float(point_a[name][0]), float(point_b[name][0])
        entry: dict[str, float | list[float | None] | None] = {
            "value": json_number(a - b),
            "a": json_number(a),
            "b": json_number(b),
        }
        if parts:
            values = np.concatenate([part[name] for part in parts])
            bounds = (
                np.nanpercentile(values, [tail, 100.0 - tail])
                if not np.isnan(values).all()
                else (math.nan, math.nan)
            )
            entry["ci95"] = [json_number(float(bound)) for bound in bounds]
        report[name] = entry
    return report


def paired_difference(
    kind: str,
    y_true: np.ndarray,
    outputs_a: np.ndarray,
    outputs_b: np.ndarray,
    metric: str,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    thresholds: tuple[float | None, float | None] = (None, None),
) -> tuple[float, float, float, float, float]:
    """``(a, b, a - b, low, high)``: ``metric`` of two models' outputs on the same rows, their
    difference and its paired percentile-bootstrap interval (both scored on every resample).

    ``thresholds``: each model's binary decision threshold (None: argmax). The same ``seed``
    gives the same interval; (nan, nan) when the metric is never defined.
    """
    # Every resample scores every metric anyway: the one-metric view of paired_differences.
    entry = paired_differences(
        kind,
        y_true,
        outputs_a,
        outputs_b,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
        thresholds=thresholds,
    )[metric]
    low, high = entry.get("ci95") or (None, None)  # type: ignore[misc]
    a, b, diff = (_nan_if_none(entry[key]) for key in ("a", "b", "value"))
    return a, b, diff, _nan_if_none(low), _nan_if_none(high)


def _nan_if_none(value: object) -> float:
    return math.nan if value is None else float(value)  # type: ignore[arg-type]


def resample_weights(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap resamples of n rows as row counts (resamples, n), a block at a time."""
    rng = np.random.default_rng(seed)
    block = max(1, min(n_resamples, _BLOCK_ELEMENTS // n))
    for start in range(0, n_resamples, block):
        b = min(block, n_resamples - start)
        idx = rng.integers(0, n, size=(b, n))
        # Offsetting each resample's indices into its own range of n bins turns b separate
        # counts into a single bincount.
        idx += np.arange(b)[:, None] * n
        yield np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def evaluate_outputs(
    kind: str,
    y_true: np.ndarray,
    outputs: np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    threshold: float | None = None,
) -> dict[str, dict[str, float | list[float | None] | None]]:
    """Point values and bootstrap intervals, ready for ``json.dumps(..., allow_nan=False)``.

    ``threshold``: a binary task's decision threshold (see :func:`classification_metrics`).

    Returns ``{"accuracy": {"value": 0.93, "ci95": [0.91, 0.95]}, ...}``. Non-finite numbers
    (undefined metrics) become ``None``. The interval key is ``"ci95"`` whatever ``confidence``
    is, so readers need not know the level; with ``n_resamples == 0`` it is left out.
    """
    _check_kind(kind, outputs)
    if kind == "regression":
        points = regression_metrics(y_true, outputs)
    else:
        points = classification_metrics(y_true, outputs, threshold)
    cis = (
        bootstrap_cis(
            kind,
            y_true,
            outputs,
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
            threshold=threshold,
        )
        if n_resamples > 0
        else {}
    )
    report: dict[str, dict[str, float | list[float | None] | None]] = {}
    for name, value in points.items():
        entry: dict[str, float | list[float | None] | None] = {"value": json_number(value)}
        if name in cis:
            entry["ci95"] = [json_number(bound) for bound in cis[name]]
        report[name] = entry
    return report


# --- weighted metrics ---------------------------------------------------------------------------


def _weighted_metrics(
    kind: str, y_true: np.ndarray, outputs: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Every metric of ``kind`` for each row of ``weights`` (b, n); each value is an array (b,).

    Weights are non-negative with a positive sum per row; integer weights are row multiplicities,
    so a row of counts gives the metric of the corresponding bootstrap resample.
    """
    return _weighted_metric_fn(kind, y_true, outputs)(np.asarray(weights, dtype=np.float64))


def _weighted_metric_fn(
    kind: str, y_true: np.ndarray, outputs: np.ndarray, threshold: float | None = None
) -> _WeightedMetrics:
    """Do the per-row work (encoding, sorting) once; the result maps weights to metrics."""
    _check_kind(kind, outputs)
    if kind == "regression":
        return _regression_weighted(*_check_regression(y_true, outputs))
    return _classification_weighted(*_check_classification(y_true, outputs), threshold)


def _classification_weighted(
    y: np.ndarray, proba: np.ndarray, threshold: float | None = None
) -> _WeightedMetrics:
    n, n_classes = proba.shape
    true_hot = np.eye(n_classes)[y]
    pred_hot = np.eye(n_classes)[predicted_classes(proba, threshold)]
    loss = -np.log(np.clip(proba[np.arange(n), y], _EPS, 1.0 - _EPS))
    # One matrix product gives, per resample, class supports, predicted counts, true positives
    # and the summed log loss.
    # The true class is in the top k when fewer than k classes score strictly higher.
    top_k = (proba > proba[np.arange(n), y][:, None]).sum(axis=1) < TOP_K
    per_row = np.column_stack([true_hot, pred_hot, true_hot * pred_hot, top_k, loss])
    rankings = [_Ranking.build(proba[:, k], y == k) for k in _ranked_columns(y, n_classes)]

    def metrics(weights: np.ndarray) -> dict[str, np.ndarray]:
        sums = weights @ per_row
        support = sums[:, :n_classes]
        predicted = sums[:, n_classes : 2 * n_classes]
        tp = sums[:, 2 * n_classes : 3 * n_classes]
        total = support.sum(axis=1)
        # zero_division=0: a class never predicted (or never true) scores 0 and still counts in
        # the macro average over all C labels, exactly as scikit-learn with labels=range(C).
        precision = _safe_divide(tp, predicted, 0.0)
        recall = _safe_divide(tp, support, 0.0)
        f1 = _safe_divide(2.0 * tp, support + predicted, 0.0)
        # Balanced accuracy, unlike recall_macro, skips classes with no true rows.
        balanced = mean_defined(_safe_divide(tp, support, math.nan))
        roc, ap = zip(*(ranking.scores(weights) for ranking in rankings), strict=True)
        values = {
            "accuracy": tp.sum(axis=1) / total,
            "balanced_accuracy": balanced,
            "precision_macro": precision.mean(axis=1),
            "recall_macro": recall.mean(axis=1),
            "f1_macro": f1.mean(axis=1),
            "f1_weighted": (f1 * support).sum(axis=1) / total,
            "roc_auc": mean_defined(np.column_stack(roc)),
            "pr_auc": mean_defined(np.column_stack(ap)),
            "log_loss": sums[:, -1] / total,
        }
        if n_classes > TOP_K:
            values["top5_accuracy"] = sums[:, -2] / total
        return values

    return metrics


def _regression_weighted(y: np.ndarray, pred: np.ndarray) -> _WeightedMetrics:
    error = pred - y
    # Centring first keeps sum(w*y^2) - sum(w*y)^2/sum(w) from cancelling catastrophically when
    # the target sits far from zero.
    centred = y - y.mean()
    per_row = np.column_stack(
        [error**2, np.abs(error), np.abs(error) / np.maximum(np.abs(y), _EPS), centred, centred**2]
    )

    def metrics(weights: np.ndarray) -> dict[str, np.ndarray]:
        total = weights.sum(axis=1)
        sq_err, abs_err, pct_err, lin, sq = (weights @ per_row).T
        ss_tot = sq - lin**2 / total
        # A resample of one repeated target value has no variance to explain; detect it exactly
        # rather than trusting ss_tot, which rounding leaves a hair above zero.
        present = weights > 0
        lowest = np.where(present, y, np.inf).min(axis=1)
        constant = lowest == np.where(present, y, -np.inf).max(axis=1)
        mse = sq_err / total
        return {
            "mse": mse,
            "rmse": np.sqrt(mse),
            "mae": abs_err / total,
            "r2": np.where(constant, math.nan, 1.0 - sq_err / np.where(constant, 1.0, ss_tot)),
            "mape": pct_err / total,
        }

    return metrics


@dataclass(frozen=True)
class _Ranking:
    """One column of scores sorted once, so each resample only has to re-weight the rows.

    Rows with tied scores form one run; thresholds, as in scikit-learn's curves, sit between runs.
    """

    order: np.ndarray  # permutation sorting the scores in descending order
    starts: np.ndarray | None  # first sorted position of each run; None when no scores tie
    positive: np.ndarray  # 1.0 for positive rows, in sorted order

    @classmethod
    def build(cls, scores: np.ndarray, positive: np.ndarray) -> _Ranking:
        order = np.argsort(-scores, kind="stable")
        new_run = np.flatnonzero(np.diff(scores[order])) + 1
        starts = None if len(new_run) == len(scores) - 1 else np.concatenate([[0], new_run])
        return cls(order, starts, positive[order].astype(np.float64))

    def scores(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ROC-AUC and average precision for each row of ``weights``; NaN where undefined."""
        run = np.take(weights, self.order, axis=1)
        pos = run * self.positive
        if self.starts is not None:
            run = np.add.reduceat(run, self.starts, axis=1)
            pos = np.add.reduceat(pos, self.starts, axis=1)
        # Weight at or above each run's score: what the threshold at that run keeps.
        kept_pos = np.cumsum(pos, axis=1)
        kept = np.cumsum(run, axis=1)
        w_pos = kept_pos[:, -1]
        w_neg = kept[:, -1] - w_pos

        def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.einsum("ij,ij->i", a, b)

        # Mann-Whitney form of the trapezoidal ROC area: each negative (run - pos) counts the
        # positives scoring at or above it, less half of those tied with it in its run.
        beaten = dot(run, kept_pos) - dot(pos, kept_pos) - 0.5 * (dot(run, pos) - dot(pos, pos))
        roc = _safe_divide(beaten, w_pos * w_neg, math.nan)
        # Average precision: each run adds recall pos / w_pos at precision kept_pos / kept. Runs
        # that keep nothing add no recall, so flooring their zero denominator changes nothing.
        precision = np.divide(kept_pos, np.maximum(kept, np.finfo(np.float64).tiny, out=kept))
        ap = _safe_divide(dot(pos, precision), w_pos, math.nan)
        return roc, ap


# --- helpers ------------------------------------------------------------------------------------


def _ranked_columns(y: np.ndarray, n_classes: int) -> list[int]:
    """Columns scored by ROC/PR-AUC: the positive one for two classes, else classes present."""
    if n_classes == 2:
        return [1]
    return np.flatnonzero(np.bincount(y, minlength=n_classes)).tolist()


def _safe_divide(num: np.ndarray, den: np.ndarray, fill: float) -> np.ndarray:
    """``num / den``, with ``fill`` where ``den`` is zero (and no warning)."""
    out = np.full(np.broadcast(num, den).shape, fill)
    return np.divide(num, den, out=out, where=den != 0)


def mean_defined(values: np.ndarray) -> np.ndarray:
    """Row means over the non-NaN entries of (b, k) ``values``; NaN for rows with none.

    Unlike ``np.nanmean`` it does not warn on all-NaN rows, which are expected here.
    """
    defined = ~np.isnan(values)
    return _safe_divide(np.where(defined, values, 0.0).sum(axis=1), defined.sum(axis=1), math.nan)


def _check_kind(kind: str, outputs: np.ndarray) -> None:
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {', '.join(TASK_KINDS)}")
    shape = np.shape(outputs)
    if kind == "binary" and (len(shape) != 2 or shape[1] != 2):
        raise ValueError(f"binary outputs must have shape (n, 2), got {shape}")


def _check_classification(y_true: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"proba must have shape (n, C) with C >= 2, got {p.shape}")
    if y.ndim != 1 or len(y) != len(p) or len(y) == 0:
        raise ValueError(f"y_true must have shape ({len(p)},) and be non-empty, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"y_true must hold integer class indices in [0, {p.shape[1]})")
    return y.astype(np.int64), p


def _check_regression(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    if y.ndim != 1 or y.shape != pred.shape or len(y) == 0:
        raise ValueError(
            f"y_true and y_pred must be non-empty 1-d arrays of equal length, got "
            f"{y.shape} and {pred.shape}"
        )
    return y, pred


def ratio_interval(
    numerator: np.ndarray,
    denominator: np.ndarray,
    *,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> tuple[float, float]:
    """Percentile bootstrap of ``sum(numerator) / sum(denominator)`` over resampled units.

    Each unit (a query, a series' window...) contributes one numerator and one denominator, so
    a mean over the units where a metric is defined is ``(values, defined)`` and a pooled ratio
    is ``(sums, counts)``. Resamples with a zero denominator are left out; ``(nan, nan)`` when
    every one is.
    """
    ratios = []
    for weights in resample_weights(len(numerator), n_resamples, seed):
        den = weights @ denominator
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios.append(np.where(den > 0, (weights @ numerator) / den, math.nan))
    values = np.concatenate(ratios)
    if np.isnan(values).all():
        return math.nan, math.nan
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.nanpercentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def json_number(value: float) -> float | None:
    """A number for ``json.dumps(..., allow_nan=False)``: non-finite becomes None."""
    return float(value) if math.isfinite(value) else None
