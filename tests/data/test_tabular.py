"""Tests for mlsmith.data.tabular: preprocessing fitted on training rows only, and prepare()."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tests.conftest import make_table

from mlsmith.config import Config, load_config
from mlsmith.data.base import PREPROCESSING_FILE
from mlsmith.data.splits import split_rows
from mlsmith.data.tables import fingerprint, read_table
from mlsmith.data.tabular import (
    TabularPreprocessor,
    drop_missing_target,
    load_preprocessor,
    prepare,
)
from mlsmith.errors import ConfigError, DataError
from mlsmith.runtime.tabular import MISSING
from mlsmith.tasks import RegressionTask, fit_task


@pytest.fixture
def mlsmith_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """caplog for the 'mlsmith' logger, which the CLI detaches from the root logger."""
    monkeypatch.setattr(logging.getLogger("mlsmith"), "propagate", True)
    caplog.set_level(logging.INFO, logger="mlsmith")
    return caplog


def _config(path: Path, **data: Any) -> Config:
    return load_config({"seed": 3, "data": {"path": str(path), "target": "label", **data}})


def _csv(tmp_path: Path, frame: pd.DataFrame, name: str = "d.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _split_of(config: Config, frame: pd.DataFrame) -> Any:
    return split_rows(
        frame,
        config.data.split,
        val=config.data.split.val,
        test=config.data.split.test,
        classification=True,
        target="label",
        seed=config.seed,
        source="",
    )


def _fit(frame: pd.DataFrame, categorical: list[str]) -> TabularPreprocessor:
    task = RegressionTask(0.0, 1.0)
    return TabularPreprocessor.fit(frame, target="label", task=task, categorical=categorical)


# --- fitted on the training split only --------------------------------------------------------


def test_statistics_and_vocabulary_come_from_training_rows_only(tmp_path: Path) -> None:
    frame = make_table("binary", rows=120)
    config = _config(tmp_path / "d.csv")
    indices = _split_of(config, frame)
    baseline = prepare(_config(_csv(tmp_path, frame))).preprocessor

    # Poison one validation row and one test row: extreme numbers, a new category, a gap.
    poisoned = frame.copy()
    for row in (indices.val[0], indices.test[0]):
        poisoned.loc[row, ["x1", "size", "color"]] = [1e6, np.nan, "violet"]
    data = prepare(_config(_csv(tmp_path, poisoned)))
    fitted = data.preprocessor

    np.testing.assert_array_equal(fitted.medians, baseline.medians)
    np.testing.assert_array_equal(fitted.means, baseline.means)
    np.testing.assert_array_equal(fitted.stds, baseline.stds)
    assert fitted.vocabularies == baseline.vocabularies == [["blue", "green", "red"]]
    # The unseen category lands in the unknown bucket; splits keep the table's row order,
    # so each poisoned row is the first of its split.
    assert data.test is not None
    assert data.val.inputs["categorical"][0, 0] == 0
    assert data.test.inputs["categorical"][0, 0] == 0
    assert (data.train.inputs["categorical"] > 0).all()

    # ...while the same change in a training row does move the statistics.
    moved = frame.copy()
    moved.loc[indices.train[0], "x1"] = 1e6
    assert prepare(_config(_csv(tmp_path, moved))).preprocessor.means[0] != baseline.means[0]


def test_statistics_equal_those_of_the_training_rows(tmp_path: Path) -> None:
    frame = make_table("binary", rows=150, seed=4)
    config = _config(_csv(tmp_path, frame))
    fitted = prepare(config).preprocessor
    train = frame.iloc[_split_of(config, frame).train]

    assert fitted.numeric == ["x1", "x2", "size"] and fitted.categorical == ["color"]
    values = train[fitted.numeric].to_numpy()
    medians = np.nanmedian(values, axis=0)
    filled = np.where(np.isnan(values), medians, values)
    np.testing.assert_allclose(fitted.medians, medians)
    np.testing.assert_allclose(fitted.means, filled.mean(axis=0))
    np.testing.assert_allclose(fitted.stds, filled.std(axis=0))


def test_fixed_test_file_does_not_influence_fitting(tmp_path: Path) -> None:
    main = _csv(tmp_path, make_table("binary", rows=100))
    odd = make_table("binary", rows=20, seed=9)
    odd["x1"] = 1e5
    odd["color"] = "ultraviolet"
    test = _csv(tmp_path, odd, "test.csv")

    with_test = prepare(_config(main, test_path=str(test)))
    without = prepare(_config(main, split={"test": 0.0}))

    np.testing.assert_array_equal(with_test.preprocessor.means, without.preprocessor.means)
    assert with_test.preprocessor.vocabularies == without.preprocessor.vocabularies
    assert with_test.test is not None
    assert (with_test.test.inputs["categorical"] == 0).all()


def test_regression_target_scale_comes_from_training_rows(tmp_path: Path) -> None:
    frame = make_table("regression", rows=100)
    config = _config(_csv(tmp_path, frame))
    data = prepare(config)
    train = frame.iloc[_split_of(config, frame).train]

    assert isinstance(data.task, RegressionTask)
    assert data.task.mean == pytest.approx(train["label"].mean())
    assert data.task.std == pytest.approx(train["label"].std(ddof=0))
    assert abs(float(data.train.target.mean())) < 1e-5


# --- numeric and categorical encoding ---------------------------------------------------------


def test_numeric_median_imputation_and_standardization() -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0, np.nan, 5.0], "const": [7.0] * 4, "gone": [np.nan] * 4})
    pre = _fit(frame, [])

    np.testing.assert_allclose(pre.medians, [2.0, 7.0, 0.0])
    np.testing.assert_allclose(pre.means, [2.5, 7.0, 0.0])
    np.testing.assert_allclose(pre.stds, [np.std([1.0, 2.0, 2.0, 5.0]), 1.0, 1.0])
    out = pre.transform(frame)
    assert out["numeric"].dtype == np.float32
    assert out["numeric"].shape == (4, 3)
    np.testing.assert_allclose(out["numeric"][:, 0].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(out["numeric"][:, 0].std(), 1.0, atol=1e-6)
    assert out["numeric"][2, 0] == out["numeric"][1, 0]  # the gap is filled with the median
    assert (out["numeric"][:, 1:] == 0).all()
    assert out["categorical"].shape == (4, 0)


def test_numeric_values_given_as_text_are_parsed() -> None:
    pre = _fit(pd.DataFrame({"a": [1.0, 3.0]}), [])
    as_text = pre.transform(pd.DataFrame({"a": ["1", "3.0"]}))["numeric"]
    np.testing.assert_array_equal(as_text, pre.transform(pd.DataFrame({"a": [1, 3]}))["numeric"])


def test_categorical_indices_unknown_and_missing_buckets() -> None:
    train = pd.DataFrame({"color": ["red", "blue", None, "red"], "shape": ["o", "x", "o", "o"]})
    pre = _fit(train, ["color", "shape"])

    assert pre.vocabularies == [sorted(["blue", "red", MISSING]), ["o", "x"]]
    assert pre.model_inputs() == {"n_numeric": 0, "cardinalities": [4, 3]}
    rows = pd.DataFrame({"color": ["blue", "red", None, "mauve"], "shape": ["x", None, "z", "o"]})
    indices = pre.transform(rows)["categorical"]

    assert indices.dtype == np.int64
    vocab = pre.vocabularies[0]
    assert indices[:, 0].tolist() == [
        vocab.index("blue") + 1,
        vocab.index("red") + 1,
        vocab.index(MISSING) + 1,  # missing was seen in training: its own bucket
        0,  # never seen: unknown bucket
    ]
    # 'shape' had no gaps in training, so a gap is unknown too.
    assert indices[:, 1].tolist() == [2, 0, 0, 1]
    assert indices.min() >= 0
    assert (indices.max(axis=0) < np.array(pre.model_inputs()["cardinalities"])).all()


def test_numeric_categories_agree_however_they_are_typed() -> None:
    pre = _fit(pd.DataFrame({"zip": [10115, 20095, 10115]}), ["zip"])
    assert pre.vocabularies == [["10115", "20095"]]
    for column in ([10115, 20095], [10115.0, 20095.0], ["10115", "20095"]):
        assert pre.transform(pd.DataFrame({"zip": column}))["categorical"][:, 0].tolist() == [1, 2]


def test_bool_columns_are_categorical_by_default(tmp_path: Path) -> None:
    frame = make_table("binary", rows=60)
    frame["flag"] = frame["x1"] > 0
    data = prepare(_config(_csv(tmp_path, frame)))
    assert data.preprocessor.categorical == ["color", "flag"]
    assert data.preprocessor.vocabularies[1] == ["False", "True"]


def test_explicit_categorical_list(tmp_path: Path) -> None:
    path = _csv(tmp_path, make_table("binary", rows=60))
    data = prepare(_config(path, categorical=["size", "color"]))
    assert data.preprocessor.categorical == ["size", "color"]
    assert data.preprocessor.numeric == ["x1", "x2"]
    assert data.preprocessor.model_inputs()["cardinalities"][1] == 4  # 3 colors + unknown
    # An explicit list is the whole list: unlisted text columns are then numeric, and fail.
    with pytest.raises(DataError, match=r"numeric column 'color' holds a non-numeric value"):
        prepare(_config(path, categorical=["size"]))


def test_categorical_config_errors(tmp_path: Path) -> None:
    path = _csv(tmp_path, make_table("binary", rows=60))
    with pytest.raises(DataError, match=r"data\.categorical column 'colour' not found"):
        prepare(_config(path, categorical=["colour"]))
    with pytest.raises(ConfigError, match=r"data\.categorical: lists the target 'label'"):
        prepare(_config(path, categorical=["color", "label"]))


def test_identifier_like_categorical_warns(
    tmp_path: Path, mlsmith_log: pytest.LogCaptureFixture
) -> None:
    frame = make_table("binary", rows=100)
    frame["user"] = [f"u{i}" for i in range(100)]
    prepare(_config(_csv(tmp_path, frame)))
    assert "column 'user' has" in mlsmith_log.text
    assert "looks like an identifier" in mlsmith_log.text


def test_drop_removes_columns(tmp_path: Path) -> None:
    frame = make_table("binary", rows=60)
    frame["row_id"] = range(60)
    data = prepare(_config(_csv(tmp_path, frame), drop=["row_id", "x2"]))
    assert data.preprocessor.features == ["x1", "size", "color"]
    with pytest.raises(DataError, match=r"data\.drop column 'nope' not found"):
        prepare(_config(_csv(tmp_path, frame), drop=["nope"]))


def test_no_features_left(tmp_path: Path) -> None:
    path = _csv(tmp_path, make_table("binary", rows=60))
    with pytest.raises(DataError, match="no feature columns left besides the target 'label'"):
        prepare(_config(path, drop=["x1", "x2", "size", "color"]))


# --- bad values -------------------------------------------------------------------------------


def test_transform_missing_feature_column_names_it() -> None:
    pre = _fit(pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0], "c": ["x", "y"]}), ["c"])
    with pytest.raises(DataError) as info:
        pre.transform(pd.DataFrame({"a": [1.0], "c": ["x"]}), "new.csv")
    assert str(info.value).startswith("new.csv: feature column 'b' not found")
    assert "columns are: a, c" in str(info.value)


def test_non_numeric_value_in_numeric_column() -> None:
    pre = _fit(pd.DataFrame({"a": [1.0, 2.0]}), [])
    with pytest.raises(DataError) as info:
        pre.transform(pd.DataFrame({"a": [1.0, 2.0, "n/a"]}), "batch.csv")
    message = str(info.value)
    assert "batch.csv: numeric column 'a' holds a non-numeric value 'n/a' (row 2)" in message
    assert "data.categorical" in message


@pytest.mark.parametrize("where", ["train", "predict"])
def test_infinite_value_is_a_data_error(where: str) -> None:
    good = pd.DataFrame({"a": [1.0, 2.0, 3.0]})
    bad = pd.DataFrame({"a": [1.0, np.inf, 3.0]})
    with pytest.raises(
        DataError, match=r"numeric column 'a' holds an infinite value inf \(row 1\)"
    ):
        _fit(bad, []) if where == "train" else _fit(good, []).transform(bad)


def test_infinite_value_in_a_file_is_reported_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "inf.csv"
    frame = make_table("binary", rows=60)
    frame.loc[7, "x1"] = -np.inf  # written as "-inf", which pandas reads back as infinity
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"numeric column 'x1' holds an infinite value -inf"):
        prepare(_config(path))


# --- missing targets --------------------------------------------------------------------------


def test_rows_with_missing_target_are_dropped_with_a_warning(
    tmp_path: Path, mlsmith_log: pytest.LogCaptureFixture
) -> None:
    frame = make_table("binary", rows=80)
    frame.loc[[3, 10, 11, 40, 79], "label"] = np.nan
    path = _csv(tmp_path, frame)
    data = prepare(_config(path))

    assert sum(data.summary["rows"].values()) == 75
    assert len(data.train) + len(data.val) + (len(data.test) if data.test else 0) == 75
    warnings = [r for r in mlsmith_log.records if r.levelno == logging.WARNING]
    assert any(
        f"{path}: dropped 5 of 80 rows whose target 'label' is missing" in r.getMessage()
        for r in warnings
    )


def test_to_split_drops_missing_targets(mlsmith_log: pytest.LogCaptureFixture) -> None:
    labels = pd.Series(["no", "yes"], name="label")
    task = fit_task("binary", labels, labels)
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "label": ["no", None, "yes"]})
    pre = TabularPreprocessor.fit(frame[["a"]], target="label", task=task, categorical=[])
    split = pre.to_split(frame, "labelled.csv")

    assert len(split) == 2
    assert split.target.tolist() == [0.0, 1.0]
    assert split.inputs["numeric"].shape == (2, 1)
    assert "labelled.csv: dropped 1 of 3 rows" in mlsmith_log.text
    with pytest.raises(DataError, match="target column 'label' not found"):
        pre.to_split(frame[["a"]], "unlabelled.csv")


def test_drop_missing_target_leaves_complete_frames_alone(
    mlsmith_log: pytest.LogCaptureFixture,
) -> None:
    frame = pd.DataFrame({"label": [1, 2]})
    assert drop_missing_target(frame, "label", "s") is frame
    assert mlsmith_log.text == ""


def test_test_file_with_text_labels_matches_numeric_labels(tmp_path: Path) -> None:
    frame = make_table("binary", rows=80)
    frame["label"] = (frame["label"] == "yes").astype(int)
    main = _csv(tmp_path, frame)
    test = make_table("binary", rows=20, seed=5)
    test["label"] = np.where(test["label"] == "yes", "1", "0")
    test.to_parquet(tmp_path / "test.parquet", index=False)

    data = prepare(_config(main, test_path=str(tmp_path / "test.parquet")))

    assert data.task.kind == "binary"
    assert data.task.classes == [0, 1]
    assert data.test is not None
    assert data.test.target.tolist() == (test["label"] == "1").astype(float).tolist()


# --- persistence and fingerprint --------------------------------------------------------------


def test_save_load_round_trip_gives_identical_transforms(tmp_path: Path) -> None:
    frame = make_table("multiclass", rows=120)
    data = prepare(_config(_csv(tmp_path, frame)))
    run_dir = tmp_path / "run"
    data.preprocessor.save(run_dir)

    state = json.loads((run_dir / PREPROCESSING_FILE).read_text())  # strict JSON, no pickles
    assert state["kind"] == "tabular" and state["target"] == "label"
    loaded = load_preprocessor(run_dir)
    assert loaded.to_dict() == data.preprocessor.to_dict()
    assert loaded.model_inputs() == data.preprocessor.model_inputs()

    fresh = make_table("multiclass", rows=40, seed=8)
    fresh.loc[0, "color"] = "unseen"
    fresh.loc[1, "x1"] = np.nan
    for name, array in data.preprocessor.transform(fresh).items():
        np.testing.assert_array_equal(loaded.transform(fresh)[name], array)
    np.testing.assert_array_equal(
        loaded.task.encode(fresh["label"]), data.task.encode(fresh["label"])
    )


def test_fingerprint_is_recorded(tmp_path: Path) -> None:
    frame = make_table("binary", rows=60)
    path = _csv(tmp_path, frame)
    first = prepare(_config(path))

    assert first.fingerprint == fingerprint(read_table(str(path)))
    assert prepare(_config(path)).fingerprint == first.fingerprint
    frame.loc[5, "x1"] += 0.5
    frame.to_csv(path, index=False)
    assert prepare(_config(path)).fingerprint != first.fingerprint


def test_prepared_summary(tmp_path: Path) -> None:
    data = prepare(_config(_csv(tmp_path, make_table("multiclass", rows=100))))
    assert data.summary["task"] == "multiclass"
    rows = data.summary["rows"]
    assert sum(rows.values()) == 100
    assert rows["test"] == 15 and abs(rows["val"] - 15) <= 1
    assert len(data.train) == rows["train"] and len(data.val) == rows["val"]
    assert data.summary["numeric"] == ["x1", "x2", "size"]
    assert data.summary["categorical"] == ["color"]
    assert data.train.inputs["numeric"].shape == (rows["train"], 3)
    assert data.train.target.dtype == np.int64


def test_datetime_columns_are_ignored_with_a_warning(
    tmp_path: Path, mlsmith_log: pytest.LogCaptureFixture
) -> None:
    frame = make_table("binary", rows=60)
    frame["seen"] = pd.date_range("2024-01-01", periods=60, freq="h")
    path = tmp_path / "d.parquet"
    frame.to_parquet(path, index=False)
    data = prepare(_config(path))
    assert "seen" not in data.preprocessor.features
    assert "ignoring date/time columns ['seen']" in mlsmith_log.text
