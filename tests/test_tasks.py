"""Tests for mlsmith.tasks: inference of the task, encoding, decoding, losses, persistence."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mlsmith.errors import DataError
from mlsmith.tasks import (
    MAX_AUTO_CLASSES,
    BinaryTask,
    MulticlassTask,
    RegressionTask,
    Task,
    fit_task,
    infer_task,
    task_from_dict,
)


def _series(values: list[object], name: str = "y") -> pd.Series:
    return pd.Series(values, name=name)


# --- infer_task -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["yes", "no", "no", "yes"], "binary"),
        ([True, False, True], "binary"),
        ([0, 1, 1, 0, 1], "binary"),
        ([0.0, 1.0, 1.0], "binary"),
        ([-1, 1, 1], "binary"),
        (["a", "b", "c", "a"], "multiclass"),
        ([0, 1, 2, 3, 2, 1], "multiclass"),
        ([1.0, 2.0, 3.0], "multiclass"),
        (list(range(MAX_AUTO_CLASSES)), "multiclass"),
        (list(range(MAX_AUTO_CLASSES + 1)), "regression"),
        ([0.5, 1.5, 2.25], "regression"),
        ([0.1, 0.2], "regression"),
        (list(np.linspace(0, 1, 50)), "regression"),
    ],
)
def test_infer_task_auto(values: list[object], expected: str) -> None:
    assert infer_task(_series(values), "auto", "data.csv") == expected


def test_infer_task_from_nullable_and_categorical_dtypes() -> None:
    assert infer_task(pd.Series([1, 2, 1], dtype="Int64", name="y"), "auto", "s") == "binary"
    assert infer_task(pd.Series(["a", "b", "c"], dtype="category"), "auto", "s") == "multiclass"
    assert infer_task(pd.Series([True, False], dtype="boolean"), "auto", "s") == "binary"


def test_infer_task_respects_request() -> None:
    assert infer_task(_series([0, 1, 2, 3]), "regression", "s") == "regression"
    assert infer_task(_series([0.5, 1.5, 0.5]), "binary", "s") == "binary"
    assert infer_task(_series(["a", "b"]), "multiclass", "s") == "multiclass"


def test_infer_task_logs_inference(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    logger = logging.getLogger("mlsmith")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logger, "propagate", True)
        with caplog.at_level(logging.INFO, logger="mlsmith"):
            infer_task(_series(["x", "y", "z"], name="kind"), "auto", "s")
    assert "task inferred from 'kind': multiclass (3 distinct values)" in caplog.text


@pytest.mark.parametrize(
    ("values", "requested", "pieces"),
    [
        (["a", "a", "a"], "auto", ["data.csv", "'y'", "single class", "'a'"]),
        ([1, 1], "multiclass", ["single class"]),
        (["a", "b", "c"], "binary", ["exactly 2 classes", "found 3"]),
        (["a", "b", "c"], "regression", ["numeric target", "'y'", "'a'"]),
    ],
)
def test_infer_task_rejects_impossible_tasks(
    values: list[object], requested: str, pieces: list[str]
) -> None:
    with pytest.raises(DataError) as info:
        infer_task(_series(values), requested, "data.csv")
    for piece in pieces:
        assert piece in str(info.value)


# --- fit_task and encoding --------------------------------------------------------------------


def test_fit_binary_sorts_classes_and_second_is_positive() -> None:
    task = fit_task("binary", _series(["yes", "no", "yes"]), _series(["yes", "no"]))

    assert isinstance(task, BinaryTask)
    assert task.classes == ["no", "yes"]
    assert task.n_outputs == 1
    encoded = task.encode(_series(["yes", "no", "no"]))
    assert encoded.dtype == np.float32
    assert encoded.tolist() == [1.0, 0.0, 0.0]


def test_fit_binary_bools_false_is_negative() -> None:
    task = fit_task("binary", _series([True, False, True]), _series([True, False]))
    assert task.classes == [False, True]
    assert task.encode(_series([True, False])).tolist() == [1.0, 0.0]


def test_fit_multiclass_uses_every_labelled_row_and_numeric_order() -> None:
    # A class only present outside the training split still gets an output.
    labelled = _series([10, 2, 1, 2, 10, 33])
    task = fit_task("multiclass", labelled, _series([10, 2]))

    assert isinstance(task, MulticlassTask)
    assert task.classes == [1, 2, 10, 33]  # numeric order, not text order
    assert task.n_outputs == 4
    assert all(type(c) is int for c in task.classes)
    encoded = task.encode(_series([33, 1, 10]))
    assert encoded.dtype == np.int64
    assert encoded.tolist() == [3, 0, 2]


def test_labels_of_the_same_value_typed_differently_agree() -> None:
    """CSV chunks may type a label as 1, 1.0 or "1": they are one class."""
    task = fit_task("multiclass", _series([1.0, 2.0, 3.0]), _series([1.0, 2.0]))

    assert task.classes == [1, 2, 3]
    assert task.encode(_series([1, 2.0, "3", np.int64(1)])).tolist() == [0, 1, 2, 0]


def test_labels_typed_differently_across_files_are_not_extra_classes() -> None:
    """A main file with 0/1 and a test file read as text "0"/"1" is still binary."""
    labelled = pd.concat([_series([0, 1, 1]), _series(["0", "1"])], ignore_index=True)
    kind = infer_task(labelled, "auto", "s")
    task = fit_task(kind, labelled, labelled[:3])

    assert kind == "binary"
    assert task.classes == [0, 1]
    assert task.encode(labelled).tolist() == [0.0, 1.0, 1.0, 0.0, 1.0]
    with pytest.raises(DataError, match="exactly 2 classes"):
        infer_task(pd.concat([labelled, _series(["2"])], ignore_index=True), "binary", "s")


@pytest.mark.parametrize(
    "labels",
    [["no", "yes", "no", "no"], ["cat", "dog", "emu", "dog", "cat"], [3, 1, 2, 3]],
)
def test_classification_encode_decode_round_trip(labels: list[object]) -> None:
    target = _series(labels)
    kind = "binary" if target.nunique() == 2 else "multiclass"
    task = fit_task(kind, target, target)
    encoded = task.encode(target)

    # Confident outputs pointing at each row's class decode back to its label.
    if kind == "binary":
        raw = np.where(encoded == 1, 8.0, -8.0).reshape(-1, 1)
    else:
        raw = np.full((len(target), task.n_outputs), -8.0)
        raw[np.arange(len(target)), encoded] = 8.0
    decoded = task.decode(raw)

    assert decoded.shape == (len(target), len(task.classes))
    np.testing.assert_allclose(decoded.sum(axis=1), 1.0)
    assert task.labels(decoded).tolist() == labels
    assert task.truth(encoded).tolist() == encoded.astype(int).tolist()


def test_binary_decode_is_the_sigmoid() -> None:
    task = BinaryTask(["neg", "pos"])
    decoded = task.decode(np.array([[0.0], [math.log(3.0)], [-40.0]], dtype=np.float32))

    np.testing.assert_allclose(decoded[:, 1], [0.5, 0.75, 1.0 / (1.0 + math.exp(40.0))])
    np.testing.assert_allclose(decoded[:, 0], 1.0 - decoded[:, 1])


def test_multiclass_decode_is_a_stable_softmax() -> None:
    task = MulticlassTask(["a", "b", "c"])
    decoded = task.decode(np.array([[1000.0, 1000.0, -1000.0], [0.0, 0.0, 0.0]]))

    assert np.isfinite(decoded).all()
    np.testing.assert_allclose(decoded, [[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-12)


def test_unknown_label_is_a_data_error_naming_it() -> None:
    task = fit_task("multiclass", _series(["a", "b", "c"]), _series(["a", "b", "c"]))
    with pytest.raises(DataError) as info:
        task.encode(_series(["a", "zebra", "b"], name="animal"))
    message = str(info.value)
    assert "'animal'" in message and "zebra" in message
    assert "known labels: a, b, c" in message


def test_absent_classes() -> None:
    task = MulticlassTask([1, 2, 3])
    assert task.absent_classes(_series([1.0, 3.0, 3.0])) == [2]


# --- losses -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_classes", [3, 5, 10])
def test_multiclass_loss_at_zero_logits_is_log_c(n_classes: int) -> None:
    task = MulticlassTask(list(range(n_classes)))
    n = 12
    target = torch.from_numpy(task.encode(_series([i % n_classes for i in range(n)])))
    loss = task.loss(torch.zeros(n, task.n_outputs), target)

    assert loss.ndim == 0
    # Averaged over the batch, like a plain loop's loss.
    assert loss.item() == pytest.approx(math.log(n_classes), rel=1e-6)


def test_binary_loss_at_zero_logit_is_log_2() -> None:
    task = BinaryTask(["no", "yes"])
    target = torch.from_numpy(task.encode(_series(["no", "yes", "yes", "no", "yes"])))
    loss = task.loss(torch.zeros(5, 1, dtype=torch.bfloat16), target)

    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_binary_loss_prefers_the_right_answer() -> None:
    task = BinaryTask([0, 1])
    target = torch.tensor([1.0, 0.0])
    right = task.loss(torch.tensor([[4.0], [-4.0]]), target)
    wrong = task.loss(torch.tensor([[-4.0], [4.0]]), target)
    assert right.item() < 0.1 < wrong.item()


def test_regression_loss_is_mean_squared_error_on_standardized_targets() -> None:
    task = RegressionTask(mean=10.0, std=2.0)
    target = torch.from_numpy(task.encode(_series([10.0, 14.0])))  # -> [0, 2]
    loss = task.loss(torch.zeros(2, 1), target)
    assert loss.item() == pytest.approx(2.0)


# --- regression -------------------------------------------------------------------------------


def test_regression_standardizes_with_training_statistics_only() -> None:
    train = _series([1.0, 2.0, 3.0, 4.0])
    labelled = _series([1.0, 2.0, 3.0, 4.0, 1000.0])
    task = fit_task("regression", labelled, train)

    assert isinstance(task, RegressionTask)
    assert task.mean == pytest.approx(2.5)
    assert task.std == pytest.approx(np.std([1.0, 2.0, 3.0, 4.0]))
    encoded = task.encode(train)
    assert encoded.dtype == np.float32
    assert encoded.mean() == pytest.approx(0.0, abs=1e-6)
    assert encoded.std() == pytest.approx(1.0, abs=1e-6)


def test_regression_decode_inverts_encode() -> None:
    values = _series([-3.5, 0.0, 12.25, 1e4, 7.0])
    task = fit_task("regression", values, values)
    encoded = task.encode(values)
    # Encoded targets are float32: exact to ~1e-7 of the target's scale.
    tol = {"rtol": 0, "atol": 1e-6 * task.std}

    np.testing.assert_allclose(task.decode(encoded.reshape(-1, 1)), values, **tol)
    np.testing.assert_allclose(task.truth(encoded), values, **tol)
    np.testing.assert_allclose(task.labels(task.decode(encoded[:, None])), values, **tol)
    assert task.n_outputs == 1 and not task.is_classification


@pytest.mark.parametrize("std", [0.0, float("nan"), float("inf")])
def test_regression_degenerate_scale_falls_back_to_one(std: float) -> None:
    task = RegressionTask(mean=5.0, std=std)
    assert task.std == 1.0
    assert task.encode(_series([5.0, 6.0])).tolist() == [0.0, 1.0]


def test_constant_regression_target_is_encodable() -> None:
    values = _series([3.0, 3.0, 3.0])
    task = fit_task("regression", values, values)
    assert np.isfinite(task.encode(values)).all()


def test_regression_rejects_non_numeric_value() -> None:
    task = RegressionTask(0.0, 1.0)
    with pytest.raises(
        DataError, match=r"regression target 'price' has a non-numeric value: 'n/a'"
    ):
        task.encode(_series([1.0, "n/a"], name="price"))


# --- persistence ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task",
    [
        BinaryTask([False, True]),
        BinaryTask(["no", "yes"]),
        MulticlassTask([1, 2, 10]),
        MulticlassTask(["lo", "mid", "hi"]),
        RegressionTask(12.5, 3.25),
    ],
    ids=lambda t: f"{t.kind}-{t.to_dict().get('classes', 'reg')}",
)
def test_task_dict_round_trip_through_json(task: Task) -> None:
    state = json.loads(json.dumps(task.to_dict()))
    restored = task_from_dict(state)

    assert type(restored) is type(task)
    assert restored.to_dict() == task.to_dict()
    raw = np.array([[0.3, -1.2, 2.0], [1.5, 0.1, -0.4]])[:, : task.n_outputs]
    np.testing.assert_array_equal(restored.decode(raw), task.decode(raw))
    np.testing.assert_array_equal(
        restored.labels(restored.decode(raw)), task.labels(task.decode(raw))
    )


def test_fitted_task_state_is_json_safe() -> None:
    """numpy scalars must not leak into the saved classes."""
    labelled = pd.Series(np.array([3, 1, 3], dtype=np.int64), name="y")
    task = fit_task("binary", labelled, labelled)
    restored = task_from_dict(json.loads(json.dumps(task.to_dict())))
    assert restored.encode(labelled).tolist() == [1.0, 0.0, 1.0]
