"""Feature importance of a tabular model: permutation on the validation split, and the boosted
trees' own gain.

Permutation importance shuffles one feature's column of the validation split's encoded inputs
(numeric or categorical: one raw column each) and measures how much the headline metric gets
worse (accuracy falls, RMSE rises), ``repeats`` times with different shuffles; the importance
is the mean loss, with a 95% interval over the repeats (mean +/- t x standard error). A feature
the model does not use scores about 0, and one whose interval holds 0 is not shown to matter.
Every family gets it (networks, boosted trees, scikit-learn estimators), since it needs only
``predict``. LightGBM and XGBoost also report their own total gain per feature, as shares.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.evaluation import point_metrics

if TYPE_CHECKING:
    from mlsmith.data.base import Split
    from mlsmith.models.base import Model

IMPORTANCE_FILE = "importance.json"
# Validation rows permuted at most: importance is a ranking, not a precise figure.
MAX_ROWS = 5_000


def permutation_importance(
    model: Model, split: Split, features: list[str], *, repeats: int = 5, seed: int = 0
) -> dict[str, Any]:
    """``{"metric", "repeats", "rows", "features": [{"name", "importance", "ci95"}...]}``, the
    most important first (see the module)."""
    task = model.task
    metric = "rmse" if task.kind == "regression" else "accuracy"
    sign = 1.0 if metric == "rmse" else -1.0  # how a worse score moves the metric
    rng = np.random.default_rng(seed)
    n = len(split)
    rows = np.sort(rng.choice(n, size=MAX_ROWS, replace=False)) if n > MAX_ROWS else np.arange(n)
    inputs = {name: array[rows] for name, array in split.inputs.items()}
    truth = task.truth(split.target[rows])
    base = _score(model, inputs, truth, metric)
    columns = _columns(inputs, features)
    results: list[dict[str, Any]] = []
    for name, (key, j) in columns.items():
        losses = []
        for _ in range(repeats):
            shuffled = dict(inputs)
            block = inputs[key].copy()
            block[:, j] = block[rng.permutation(len(block)), j]
            shuffled[key] = block
            losses.append(sign * (_score(model, shuffled, truth, metric) - base))
        mean = float(np.mean(losses))
        half = _half_width(np.asarray(losses))
        results.append({"name": name, "importance": mean, "ci95": [mean - half, mean + half]})
    results.sort(key=lambda r: -r["importance"])
    return {
        "metric": metric,
        "baseline": base,
        "repeats": repeats,
        "rows": len(rows),
        "split": "val",
        "features": results,
    }


def gain_importance(model: Model, features: list[str]) -> dict[str, float] | None:
    """LightGBM's or XGBoost's total gain per feature as shares of the whole; None for other
    families."""
    booster = getattr(model, "booster", None)
    if booster is None:
        return None
    if model.family == "lightgbm":
        gains = np.asarray(booster.feature_importance(importance_type="gain"), dtype=float)
    elif model.family == "xgboost":
        scores = booster.get_score(importance_type="total_gain")
        gains = np.array([float(scores.get(f"f{i}", 0.0)) for i in range(len(features))])
    else:
        return None
    if len(gains) != len(features) or gains.sum() <= 0:
        return None
    shares = gains / gains.sum()
    order = np.argsort(-shares)
    return {features[i]: float(shares[i]) for i in order}


def _columns(inputs: dict[str, np.ndarray], features: list[str]) -> dict[str, tuple[str, int]]:
    """Each feature's block and column in the encoded inputs: numerics first, then the
    categorical codes, in the preprocessor's order."""
    n_numeric = inputs["numeric"].shape[1]
    n_categorical = inputs["categorical"].shape[1]
    if len(features) != n_numeric + n_categorical:
        raise ValueError(
            f"{len(features)} feature names for {n_numeric} numeric and {n_categorical} "
            "categorical inputs"
        )
    return {
        name: ("numeric", j) if j < n_numeric else ("categorical", j - n_numeric)
        for j, name in enumerate(features)
    }


def _score(model: Model, inputs: dict[str, np.ndarray], truth: np.ndarray, metric: str) -> float:
    decoded = model.predict(inputs)
    scores = point_metrics(model.task.kind, truth, decoded, threshold=model.task.threshold)
    return float(scores[metric])


def _half_width(values: np.ndarray) -> float:
    """Half the 95% t-interval of the mean of ``values`` (0 for a single value)."""
    if len(values) < 2:
        return 0.0
    from scipy import stats

    t = float(stats.t.ppf(0.975, len(values) - 1))
    half = t * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return half if math.isfinite(half) else 0.0
