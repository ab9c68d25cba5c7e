"""Tests for mlsmith.evaluation: sklearn agreement, weighted bootstrap semantics, JSON output."""

from __future__ import annotations

import json
import math
import time
import warnings

import numpy as np
import pytest
import sklearn
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_absolute_percentage_error,
    mean_squared_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
)

from mlsmith.evaluation import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    _weighted_metrics,
    bootstrap_cis,
    classification_metrics,
    confusion,
    evaluate_outputs,
    point_metrics,
    regression_metrics,
)


def _binary(n: int, seed: int, *, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = 1.0 / (1.0 + np.exp(-(1.5 * y - 0.75 + rng.normal(size=n))))
    if ties:
        score = np.round(score, 1)
    return y, np.column_stack([1.0 - score, score])


def _multiclass(
    n: int, seed: int, *, n_classes: int = 4, ties: bool = False, absent: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    present = [k for k in range(n_classes) if k != absent]
    y = rng.choice(present, size=n)
    if ties:
        # Few distinct probability rows, so every column is full of tied scores.
        proba = rng.dirichlet(np.ones(n_classes), size=6)[rng.integers(0, 6, n)]
    else:
        logits = rng.normal(size=(n, n_classes)) + 1.2 * np.eye(n_classes)[y]
        proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


def _regression(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.normal(50.0, 10.0, n)
    return y, y + rng.normal(0.0, 4.0, n)


def _sklearn_classification(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """The documented conventions spelled out with plain scikit-learn calls."""
    n_classes = proba.shape[1]
    labels = np.arange(n_classes)
    pred = proba.argmax(axis=1)
    columns = [1] if n_classes == 2 else np.unique(y)
    roc = [roc_auc_score(y == k, proba[:, k]) for k in columns if 0 < np.sum(y == k) < len(y)]
    ap = [average_precision_score(y == k, proba[:, k]) for k in columns if np.any(y == k)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = balanced_accuracy_score(y, pred)
    prf = {"labels": labels, "zero_division": 0}
    return {
        "accuracy": accuracy_score(y, pred),
        "balanced_accuracy": balanced,
        "precision_macro": precision_score(y, pred, average="macro", **prf),
        "recall_macro": recall_score(y, pred, average="macro", **prf),
        "f1_macro": f1_score(y, pred, average="macro", **prf),
        "f1_weighted": f1_score(y, pred, average="weighted", **prf),
        "roc_auc": np.mean(roc) if roc else math.nan,
        "pr_auc": np.mean(ap) if ap else math.nan,
        "log_loss": log_loss(y, proba, labels=labels),
    }


CLASSIFICATION_CASES = {
    "binary": ("binary", *_binary(300, 1)),
    "binary-ties": ("binary", *_binary(300, 2, ties=True)),
    "multiclass": ("multiclass", *_multiclass(400, 3)),
    "multiclass-ties": ("multiclass", *_multiclass(400, 4, ties=True)),
    "multiclass-absent": ("multiclass", *_multiclass(400, 5, ties=True, absent=2)),
}


@pytest.mark.parametrize("case", CLASSIFICATION_CASES)
def test_classification_unit_weights_match_sklearn(case: str) -> None:
    kind, y, proba = CLASSIFICATION_CASES[case]
    expected = _sklearn_classification(y, proba)
    points = classification_metrics(y, proba)
    weighted = _weighted_metrics(kind, y, proba, np.ones((1, len(y))))
    assert tuple(points) == tuple(weighted) == CLASSIFICATION_METRICS
    for name in CLASSIFICATION_METRICS:
        assert points[name] == pytest.approx(expected[name], abs=1e-9), name
        assert weighted[name].shape == (1,)
        assert weighted[name][0] == pytest.approx(expected[name], abs=1e-9), name


def test_multiclass_auc_is_sklearn_ovr_macro_when_all_classes_present() -> None:
    y, proba = _multiclass(400, 6, ties=True)
    points = classification_metrics(y, proba)
    assert points["roc_auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"))
    assert points["pr_auc"] == pytest.approx(average_precision_score(y, proba))


def test_regression_unit_weights_match_sklearn() -> None:
    y, pred = _regression(500, 7)
    y[:3] = 0.0  # MAPE's epsilon floor must match sklearn's too
    mse = mean_squared_error(y, pred)
    expected = {
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": mean_absolute_error(y, pred),
        "r2": r2_score(y, pred),
        "mape": mean_absolute_percentage_error(y, pred),
    }
    points = regression_metrics(y, pred)
    weighted = _weighted_metrics("regression", y, pred, np.ones((1, len(y))))
    assert tuple(points) == tuple(weighted) == REGRESSION_METRICS
    for name in REGRESSION_METRICS:
        assert points[name] == pytest.approx(expected[name], rel=1e-9), name
        assert weighted[name][0] == pytest.approx(expected[name], rel=1e-9), name


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("binary", _binary(40, 8, ties=True)),
        ("multiclass", _multiclass(25, 9, ties=True)),  # resamples often miss a class
        ("regression", _regression(12, 10)),  # small enough to draw constant-free resamples
    ],
)
def test_count_weights_equal_metrics_of_resampled_rows(kind: str, data: tuple) -> None:
    y, outputs = data
    rng = np.random.default_rng(11)
    idx = rng.integers(0, len(y), size=(30, len(y)))
    counts = np.stack([np.bincount(row, minlength=len(y)) for row in idx])
    weighted = _weighted_metrics(kind, y, outputs, counts)
    point_fn = regression_metrics if kind == "regression" else classification_metrics
    for r, row in enumerate(idx):
        expected = point_fn(y[row], outputs[row])
        for name, value in expected.items():
            assert weighted[name][r] == pytest.approx(value, abs=1e-9, nan_ok=True), name


def test_degenerate_metrics_are_nan_not_errors() -> None:
    y = np.zeros(6, dtype=np.int64)
    proba = np.full((6, 2), 0.5)
    points = classification_metrics(y, proba)
    assert math.isnan(points["roc_auc"]) and math.isnan(points["pr_auc"])
    assert points["accuracy"] == 1.0
    weighted = _weighted_metrics("binary", y, proba, np.ones((1, 6)))
    assert math.isnan(weighted["roc_auc"][0]) and math.isnan(weighted["pr_auc"][0])

    constant = np.full(5, 0.1)
    assert math.isnan(regression_metrics(constant, constant + 0.1)["r2"])
    weighted = _weighted_metrics("regression", constant, constant + 0.1, np.ones((1, 5)))
    assert math.isnan(weighted["r2"][0])


def test_confusion_keeps_absent_classes() -> None:
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.2, 0.6, 0.2], [0.6, 0.3, 0.1]])
    assert confusion(y, proba) == [[1, 0, 1], [1, 1, 0], [0, 0, 0]]


@pytest.mark.parametrize("kind", ["binary", "regression"])
def test_cis_contain_point_and_shrink_with_n(kind: str) -> None:
    widths = {}
    for n in (200, 5000):
        y, outputs = _regression(n, 12) if kind == "regression" else _binary(n, 12)
        points = regression_metrics(y, outputs) if kind == "regression" else None
        points = points or classification_metrics(y, outputs)
        cis = bootstrap_cis(kind, y, outputs, n_resamples=400, seed=1)
        assert set(cis) == set(points)
        for name, (low, high) in cis.items():
            assert low <= points[name] <= high, (n, name)
        widths[n] = {name: high - low for name, (low, high) in cis.items()}
    for name, wide in widths[200].items():
        assert widths[5000][name] < 0.5 * wide, name


def test_cis_are_reproducible_and_seed_dependent() -> None:
    y, proba = _multiclass(300, 13)
    first = bootstrap_cis("multiclass", y, proba, n_resamples=200, seed=5)
    assert bootstrap_cis("multiclass", y, proba, n_resamples=200, seed=5) == first
    assert bootstrap_cis("multiclass", y, proba, n_resamples=200, seed=6) != first


def test_lower_confidence_gives_narrower_interval() -> None:
    y, proba = _binary(500, 14)
    wide = bootstrap_cis("binary", y, proba, n_resamples=300, confidence=0.95)
    narrow = bootstrap_cis("binary", y, proba, n_resamples=300, confidence=0.5)
    for name in CLASSIFICATION_METRICS:
        assert wide[name][0] < narrow[name][0] < narrow[name][1] < wide[name][1], name


@pytest.mark.slow
def test_vectorised_bootstrap_agrees_with_naive_loop() -> None:
    y, proba = _binary(500, 15)
    n_resamples = 2000
    vectorised = bootstrap_cis("binary", y, proba, n_resamples=n_resamples, seed=0)
    rng = np.random.default_rng(123)
    accuracy, roc = [], []
    # Validation overhead dominates sklearn calls at this size; skipping it halves the loop.
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
        for _ in range(n_resamples):
            row = rng.choice(len(y), size=len(y), replace=True)
            accuracy.append(accuracy_score(y[row], proba[row].argmax(axis=1)))
            roc.append(roc_auc_score(y[row], proba[row, 1]))
    for name, values in (("accuracy", accuracy), ("roc_auc", roc)):
        naive = np.percentile(values, [2.5, 97.5])
        np.testing.assert_allclose(vectorised[name], naive, atol=0.01, err_msg=name)


def test_evaluate_outputs_is_json_safe() -> None:
    y, proba = _binary(200, 16)
    report = evaluate_outputs("binary", y, proba, n_resamples=100)
    json.dumps(report, allow_nan=False)
    assert list(report) == list(CLASSIFICATION_METRICS)
    low, high = report["accuracy"]["ci95"]
    assert low <= report["accuracy"]["value"] <= high

    degenerate = evaluate_outputs("binary", np.ones(20, dtype=np.int64), proba[:20], n_resamples=50)
    json.dumps(degenerate, allow_nan=False)
    assert degenerate["roc_auc"] == {"value": None, "ci95": [None, None]}
    assert degenerate["pr_auc"]["value"] is not None

    constant = np.full(30, 2.0)
    report = evaluate_outputs("regression", constant, constant + 1.0, n_resamples=50)
    json.dumps(report, allow_nan=False)
    assert report["r2"] == {"value": None, "ci95": [None, None]}


def test_evaluate_outputs_without_resamples_omits_ci() -> None:
    y, pred = _regression(50, 17)
    report = evaluate_outputs("regression", y, pred, n_resamples=0)
    assert report["rmse"] == {"value": pytest.approx(regression_metrics(y, pred)["rmse"])}
    assert report == {name: {"value": value} for name, value in regression_metrics(y, pred).items()}


def test_invalid_inputs_raise() -> None:
    y, proba = _multiclass(20, 18)
    with pytest.raises(ValueError, match="task kind"):
        evaluate_outputs("ranking", y, proba)
    with pytest.raises(ValueError, match="binary outputs"):
        bootstrap_cis("binary", y, proba)
    with pytest.raises(ValueError, match="class indices"):
        classification_metrics(y + 10, proba)


def test_bootstrap_speed_binary_20k() -> None:
    y, proba = _binary(20_000, 19)
    start = time.perf_counter()
    cis = bootstrap_cis("binary", y, proba, n_resamples=1000, seed=0)
    elapsed = time.perf_counter() - start
    print(f"binary bootstrap, n=20000, 1000 resamples: {elapsed:.2f} s")
    assert set(cis) == set(CLASSIFICATION_METRICS)
    assert elapsed < 20.0


@pytest.mark.parametrize("kind", ["binary", "multiclass", "regression"])
def test_point_metrics_equal_scikit_learn_values(kind: str) -> None:
    rng = np.random.default_rng(7)
    n = 300
    if kind == "regression":
        y = rng.normal(10.0, 2.0, n)
        out = y + rng.normal(0.0, 1.0, n)
        reference = regression_metrics(y, out)
    else:
        c = 2 if kind == "binary" else 4
        y = rng.integers(0, c, n)
        out = rng.dirichlet(np.ones(c), n)
        reference = classification_metrics(y, out)
    fast = point_metrics(kind, y, out)
    assert fast.keys() == reference.keys()
    for name, value in reference.items():
        assert fast[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
