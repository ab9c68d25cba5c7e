"""Live A/B metrics: scikit-learn's values, sound intervals, bounded memory, shadow agreement."""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, mean_absolute_error, mean_squared_error, roc_auc_score

from mlsmith.runtime.outputs import output_frame
from mlsmith.serving.feedback import FeedbackResult, FeedbackStore


def proba_frame(classes: list[Any], proba: np.ndarray) -> pd.DataFrame:
    """What Package.predict returns for classification rows."""
    return output_frame(classes, proba)


def random_proba(rng: np.random.Generator, n: int, n_classes: int) -> np.ndarray:
    logits = rng.normal(size=(n, n_classes))
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def noisy_labels(rng: np.random.Generator, proba: np.ndarray) -> np.ndarray:
    """Labels correlated with the probabilities, so metrics are neither 0 nor 1."""
    return np.array([rng.choice(len(p), p=p) for p in proba])


def check_metric(entry: dict[str, Any], expected: float) -> None:
    assert entry["value"] == pytest.approx(expected, abs=1e-9)
    low, high = entry["ci95"]
    assert low <= entry["value"] <= high


def test_binary_metrics_match_sklearn_over_multi_row_requests() -> None:
    rng = np.random.default_rng(0)
    classes = ["no", "yes"]
    store = FeedbackStore("binary", classes, n_resamples=300)
    all_y, all_p = [], []
    for i in range(150):
        rows = 1 + i % 3
        proba = random_proba(rng, rows, 2)
        store.record(f"r{i}", "champion", proba_frame(classes, proba))
        y = noisy_labels(rng, proba)
        label = classes[y[0]] if rows == 1 else [classes[k] for k in y]
        assert store.add_labels([f"r{i}"], [label]) == FeedbackResult(1, rows, ())
        all_y.append(y)
        all_p.append(proba)
    y, p = np.concatenate(all_y), np.concatenate(all_p)

    report = store.report()
    json.dumps(report, allow_nan=False)
    variant = report["variants"]["champion"]
    assert variant["n_requests"] == 150
    assert variant["n_labelled"] == len(y) == 300
    assert set(variant["metrics"]) == {"accuracy", "roc_auc"}
    check_metric(variant["metrics"]["accuracy"], accuracy_score(y, p.argmax(axis=1)))
    check_metric(variant["metrics"]["roc_auc"], roc_auc_score(y, p[:, 1]))
    assert report["shadow"] is None


def test_binary_metrics_use_the_packages_threshold() -> None:
    """A package with a decision threshold answers p >= threshold; its live accuracy scores
    those labels, not the most probable class."""
    rng = np.random.default_rng(1)
    classes = ["no", "yes"]
    store = FeedbackStore("binary", classes, n_resamples=50, threshold=0.3)
    proba = random_proba(rng, 200, 2)
    y = noisy_labels(rng, proba)
    store.record("r", "champion", proba_frame(classes, proba))
    store.add_labels(["r"], [[classes[k] for k in y]])
    accuracy = store.report()["variants"]["champion"]["metrics"]["accuracy"]["value"]
    assert accuracy == pytest.approx(accuracy_score(y, proba[:, 1] >= 0.3))
    assert accuracy != pytest.approx(accuracy_score(y, proba.argmax(axis=1)))


def test_multiclass_auc_is_macro_ovr_and_only_with_every_class() -> None:
    rng = np.random.default_rng(1)
    classes = [0, 1, 2]
    store = FeedbackStore("multiclass", classes, n_resamples=200)
    proba = random_proba(rng, 120, 3)
    y = noisy_labels(rng, proba)
    for i in range(120):
        store.record(f"r{i}", "a", proba_frame(classes, proba[i : i + 1]))
    # Class 2 has no label yet: AUC over two of three classes would not compare.
    partial = [i for i in range(120) if y[i] != 2]
    store.add_labels([f"r{i}" for i in partial], [int(y[i]) for i in partial])
    metrics = store.report()["variants"]["a"]["metrics"]
    assert set(metrics) == {"accuracy"}
    check_metric(metrics["accuracy"], accuracy_score(y[partial], proba[partial].argmax(axis=1)))

    store.add_labels([f"r{i}" for i in range(120)], [int(k) for k in y])
    metrics = store.report()["variants"]["a"]["metrics"]
    check_metric(metrics["accuracy"], accuracy_score(y, proba.argmax(axis=1)))
    check_metric(metrics["roc_auc"], roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def test_regression_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(2)
    store = FeedbackStore("regression", None, n_resamples=300)
    pred = rng.normal(10, 3, size=200)
    y = pred + rng.normal(0, 1, size=200)
    for i in range(0, 200, 2):
        store.record(f"r{i}", "champion", pd.DataFrame({"prediction": pred[i : i + 2]}))
    ids = [f"r{i}" for i in range(0, 200, 2)]
    # Every second label an int: JSON numbers either way.
    sent = [[float(y[i]), int(np.round(y[i + 1]))] for i in range(0, 200, 2)]
    result = store.add_labels(ids, sent)
    assert (result.matched, result.rows) == (100, 200)
    y[1::2] = np.round(y[1::2])  # the integer labels sent above

    metrics = store.report()["variants"]["champion"]["metrics"]
    assert set(metrics) == {"rmse", "mae"}
    check_metric(metrics["rmse"], math.sqrt(mean_squared_error(y, pred)))
    check_metric(metrics["mae"], mean_absolute_error(y, pred))


def test_variants_are_scored_separately() -> None:
    classes = [0, 1]
    store = FeedbackStore("binary", classes, n_resamples=50)
    right = np.array([[0.1, 0.9], [0.8, 0.2]])
    store.record("c1", "champion", proba_frame(classes, right))
    store.record("x1", "challenger", proba_frame(classes, right[::-1]))
    store.record("x2", "challenger", proba_frame(classes, right[:1]))
    store.add_labels(["c1", "x1"], [[1, 0], [1, 0]])
    report = store.report()["variants"]
    assert report["champion"]["metrics"]["accuracy"]["value"] == 1.0
    assert report["challenger"]["metrics"]["accuracy"]["value"] == 0.0
    assert report["challenger"]["n_requests"] == 2
    assert report["challenger"]["n_labelled"] == 2


def test_unlabelled_variant_has_counts_and_no_metrics() -> None:
    store = FeedbackStore("regression", None)
    store.record("r", "champion", pd.DataFrame({"prediction": [1.0]}))
    assert store.report()["variants"] == {
        "champion": {"n_requests": 1, "n_labelled": 0, "metrics": {}}
    }


def test_unknown_ids_are_counted_not_raised() -> None:
    store = FeedbackStore("binary", [0, 1])
    store.record("known", "a", proba_frame([0, 1], np.array([[0.3, 0.7]])))
    result = store.add_labels(["ghost", "known", "other"], [1, 1, 0])
    assert result == FeedbackResult(matched=1, rows=1, unknown=("ghost", "other"))
    assert result.to_dict() == {"matched": 1, "rows": 1, "unknown": ["ghost", "other"]}


def test_eviction_keeps_the_newest_rows_within_capacity() -> None:
    store = FeedbackStore("regression", None, capacity=10, n_resamples=20)
    for i in range(25):
        rows = 1 + i % 3
        store.record(f"r{i}", "a", pd.DataFrame({"prediction": np.zeros(rows)}))
        assert len(store) <= 10
    # A request larger than the whole window is counted but not kept.
    store.record("huge", "a", pd.DataFrame({"prediction": np.zeros(11)}))
    assert len(store) <= 10
    report = store.report()
    assert report["variants"]["a"]["n_requests"] == 26
    assert report["rows_held"] == len(store)
    result = store.add_labels(["r0", "r24", "huge"], [0.0, [1.0], 0.0])
    assert result.unknown == ("r0", "huge")
    assert result.matched == 1


@pytest.mark.parametrize(
    ("classes", "sent", "expected"),
    [
        ([0, 1], "1", 1),
        ([0, 1], 1.0, 1),
        ([0, 1], True, 1),
        (["0", "1"], 1, 1),
        (["cat", "dog"], "dog", 1),
        ([False, True], "false", 0),
        ([1.5, 2.5], "2.5", 1),
    ],
)
def test_class_labels_are_coerced_to_the_package_classes(
    classes: list[Any], sent: Any, expected: int
) -> None:
    store = FeedbackStore("binary", classes, n_resamples=10)
    proba = np.eye(2)[[expected]] * 0.8 + 0.1
    store.record("r", "a", proba_frame(classes, proba))
    assert store.add_labels(["r"], [sent]).matched == 1
    assert store.report()["variants"]["a"]["metrics"]["accuracy"]["value"] == 1.0


@pytest.mark.parametrize(
    ("task", "classes", "label", "named"),
    [
        ("regression", None, "abc", "'abc'"),
        ("regression", None, "3.5", "'3.5'"),
        ("regression", None, True, "True"),
        ("regression", None, None, "None"),
        ("regression", None, math.inf, "inf"),
        ("binary", ["cat", "dog"], "bird", "'bird'"),
        ("binary", [0, 1], 2, "2"),
        ("binary", [0, 1], None, "None"),
        ("binary", [0, 1], {"a": 1}, "{'a': 1}"),
    ],
)
def test_wrong_labels_are_rejected_by_name(
    task: str, classes: list[Any] | None, label: Any, named: str
) -> None:
    store = FeedbackStore(task, classes)
    frame = (
        pd.DataFrame({"prediction": [1.0]})
        if task == "regression"
        else proba_frame(classes or [], np.array([[0.5, 0.5]]))
    )
    store.record("good", "a", frame)
    store.record("r7", "a", frame)
    good = 1.0 if task == "regression" else (classes or [])[0]
    with pytest.raises(ValueError, match="r7") as error:
        store.add_labels(["good", "r7"], [good, label])
    assert named in str(error.value)
    # All or nothing: the valid label before it was not stored either.
    assert store.report()["variants"]["a"]["n_labelled"] == 0


def test_label_count_must_match_request_rows() -> None:
    store = FeedbackStore("binary", [0, 1])
    store.record("r", "a", proba_frame([0, 1], np.array([[0.5, 0.5], [0.2, 0.8]])))
    with pytest.raises(ValueError, match=r"'r' has 2 row\(s\) but 1 label"):
        store.add_labels(["r"], [1])
    with pytest.raises(ValueError, match="2 request ids but 1 labels"):
        store.add_labels(["r", "s"], [[0, 1]])


def test_outputs_must_carry_every_class_probability() -> None:
    store = FeedbackStore("multiclass", ["a", "b", "c"])
    with pytest.raises(ValueError, match="missing proba_c"):
        store.record("r", "v", pd.DataFrame({"prediction": ["a"], "proba_a": [1], "proba_b": [0]}))
    with pytest.raises(ValueError, match="at least two classes"):
        FeedbackStore("binary", [1])
    with pytest.raises(ValueError, match="unknown task"):
        FeedbackStore("ranking", None)


def test_shadow_agreement_and_metrics_classification() -> None:
    classes = ["a", "b", "c"]
    store = FeedbackStore("multiclass", classes, n_resamples=50)
    eye = np.eye(3) * 0.7 + 0.1
    live_pred = [0, 1, 2, 0, 1, 2, 0, 1]
    shadow_pred = [0, 1, 2, 1, 1, 0, 0, 1]  # 6 of 8 agree
    variants = ["champion"] * 4 + ["challenger"] * 4
    for i in range(8):
        store.record(f"r{i}", variants[i], proba_frame(classes, eye[[live_pred[i]]]))
        store.record(f"r{i}", "candidate", proba_frame(classes, eye[[shadow_pred[i]]]), shadow=True)
    # A shadow answer may also arrive first.
    store.record("early", "candidate", proba_frame(classes, eye[[2]]), shadow=True)
    store.record("early", "champion", proba_frame(classes, eye[[2]]))
    # Labels equal to the live answers: the live model is right, the shadow 6 times of 9.
    store.add_labels(
        [f"r{i}" for i in range(8)] + ["early"], [classes[k] for k in live_pred] + ["c"]
    )

    report = store.report()
    shadow = report["shadow"]
    assert shadow["name"] == "candidate"
    assert shadow["n_requests"] == 9
    assert shadow["n_labelled"] == 9
    assert shadow["metrics"]["accuracy"]["value"] == pytest.approx(7 / 9)
    assert shadow["agreement"]["n_rows"] == 9
    assert shadow["agreement"]["label_agreement"] == pytest.approx(7 / 9)
    assert shadow["agreement"]["by_variant"] == {
        "champion": {"n_rows": 5, "label_agreement": pytest.approx(4 / 5)},
        "challenger": {"n_rows": 4, "label_agreement": pytest.approx(3 / 4)},
    }
    # The shadow never counts as a live variant.
    assert set(report["variants"]) == {"champion", "challenger"}
    assert report["variants"]["champion"]["metrics"]["accuracy"]["value"] == 1.0
    json.dumps(report, allow_nan=False)


def test_shadow_agreement_regression_is_mean_abs_difference() -> None:
    store = FeedbackStore("regression", None, n_resamples=50)
    store.record("r1", "live", pd.DataFrame({"prediction": [1.0, 2.0]}))
    store.record("r1", "shadow", pd.DataFrame({"prediction": [1.5, 1.0]}), shadow=True)
    store.record("r2", "live", pd.DataFrame({"prediction": [0.0]}))
    store.record("r2", "shadow", pd.DataFrame({"prediction": [0.0]}), shadow=True)
    # Not pairable row by row with the live answer: ignored.
    store.record("r2", "shadow", pd.DataFrame({"prediction": [0.0, 9.0]}), shadow=True)
    store.add_labels(["r1"], [[1.0, 2.0]])

    shadow = store.report()["shadow"]
    assert shadow["agreement"]["n_rows"] == 3
    assert shadow["agreement"]["mean_abs_difference"] == pytest.approx(1.5 / 3)
    assert shadow["n_labelled"] == 2
    assert shadow["metrics"]["mae"]["value"] == pytest.approx(0.75)


def test_reused_request_id_keeps_the_newer_answer() -> None:
    store = FeedbackStore("regression", None, n_resamples=10)
    store.record("r", "a", pd.DataFrame({"prediction": [0.0]}))
    store.add_labels(["r"], [5.0])
    store.record("r", "b", pd.DataFrame({"prediction": [1.0, 2.0]}))
    report = store.report()["variants"]
    assert report["a"]["n_labelled"] == 0 and report["b"]["n_labelled"] == 0
    assert len(store) == 2


def test_threads_record_label_and_report_together() -> None:
    classes = [0, 1]
    store = FeedbackStore("binary", classes, capacity=100_000, n_resamples=20)
    errors: list[BaseException] = []
    frame = proba_frame(classes, np.array([[0.3, 0.7]]))

    def work(worker: int) -> None:
        try:
            for i in range(300):
                rid = f"w{worker}-{i}"
                store.record(rid, f"v{worker % 2}", frame)
                store.record(rid, "shadow", frame, shadow=True)
                assert store.add_labels([rid], [i % 2]).matched == 1
                if i % 100 == 0:
                    store.report()
        except BaseException as error:  # surfaced below: a thread's exception is otherwise lost
            errors.append(error)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    report = store.report()
    assert len(store) == 1800
    assert report["variants"]["v0"]["n_requests"] == report["variants"]["v1"]["n_requests"] == 900
    assert report["variants"]["v0"]["n_labelled"] == 900
    assert report["shadow"]["n_requests"] == 1800
    assert report["shadow"]["agreement"]["label_agreement"] == 1.0
    assert report["variants"]["v0"]["metrics"]["accuracy"]["value"] == pytest.approx(0.5)


def test_metrics_follow_the_labelled_rows_between_reports() -> None:
    store = FeedbackStore("regression", None, capacity=2, n_resamples=10)
    store.record("r1", "a", pd.DataFrame({"prediction": [0.0]}))
    store.add_labels(["r1"], [1.0])
    first = store.report()
    assert first["variants"]["a"]["metrics"]["mae"]["value"] == 1.0
    first["variants"]["a"]["metrics"]["mae"]["value"] = -1  # a caller's copy, not the store's
    assert store.report()["variants"]["a"]["metrics"]["mae"]["value"] == 1.0

    store.record("r2", "a", pd.DataFrame({"prediction": [0.0]}))
    store.add_labels(["r2"], [3.0])
    assert store.report()["variants"]["a"]["metrics"]["mae"]["value"] == 2.0
    # r1 falls out of the window: the metrics are over r2 alone.
    store.record("r3", "a", pd.DataFrame({"prediction": [0.0]}))
    assert store.report()["variants"]["a"]["metrics"]["mae"]["value"] == 3.0
