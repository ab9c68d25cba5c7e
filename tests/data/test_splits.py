"""Tests for mlsmith.data.splits: seeded stratified, grouped and chronological splits."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import make_table

from mlsmith.config import SplitConfig, load_config
from mlsmith.data.splits import SplitIndices, split_rows
from mlsmith.data.tabular import prepare
from mlsmith.errors import DataError


@pytest.fixture
def mlsmith_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """caplog for the 'mlsmith' logger, which the CLI detaches from the root logger."""
    monkeypatch.setattr(logging.getLogger("mlsmith"), "propagate", True)
    caplog.set_level(logging.INFO, logger="mlsmith")
    return caplog


def _split(
    frame: pd.DataFrame,
    cfg: SplitConfig | None = None,
    *,
    val: float = 0.15,
    test: float = 0.15,
    classification: bool = True,
    seed: int = 0,
) -> SplitIndices:
    return split_rows(
        frame,
        cfg or SplitConfig(),
        val=val,
        test=test,
        classification=classification,
        target="label",
        seed=seed,
        source="table.csv",
    )


def _assert_partition(indices: SplitIndices, n: int) -> None:
    parts = [indices.train, indices.val, indices.test]
    joined = np.concatenate(parts)
    assert len(joined) == n
    assert np.array_equal(np.sort(joined), np.arange(n))
    for part in parts:
        assert np.array_equal(part, np.sort(part))


# --- random / stratified ----------------------------------------------------------------------


def test_split_is_a_partition_with_requested_sizes() -> None:
    frame = make_table("multiclass", rows=200)
    indices = _split(frame, val=0.2, test=0.1)

    _assert_partition(indices, 200)
    assert len(indices.test) == 20
    assert len(indices.val) == 40
    assert len(indices.train) == 140


def test_same_seed_same_split_other_seed_other_split() -> None:
    frame = make_table("binary", rows=200)
    first, again, other = _split(frame, seed=5), _split(frame, seed=5), _split(frame, seed=6)

    for name in ("train", "val", "test"):
        assert np.array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.test, other.test)
    assert not np.array_equal(first.val, other.val)


def test_stratified_split_keeps_class_proportions() -> None:
    frame = make_table("multiclass", rows=600, seed=3)
    overall = frame["label"].value_counts(normalize=True)
    assert overall.min() < 0.3  # the classes are unbalanced, so this is a real check
    indices = _split(frame, val=0.2, test=0.2)

    for part in (indices.train, indices.val, indices.test):
        shares = frame["label"].iloc[part].value_counts(normalize=True)
        for label, share in overall.items():
            # Stratification rounds by at most one row per class.
            assert abs(shares[label] - share) <= 1.0 / len(part) + 1e-9


def test_stratify_false_is_a_plain_random_split() -> None:
    frame = make_table("multiclass", rows=300)
    stratified = _split(frame, SplitConfig(stratify=True))
    plain = _split(frame, SplitConfig(stratify=False))
    _assert_partition(plain, 300)
    assert not np.array_equal(stratified.test, plain.test)


def test_regression_is_not_stratified_but_still_split() -> None:
    frame = make_table("regression", rows=100)
    indices = _split(frame, classification=False)
    _assert_partition(indices, 100)
    assert len(indices.test) == 15


def test_impossible_stratification_falls_back_with_a_warning(
    mlsmith_log: pytest.LogCaptureFixture,
) -> None:
    frame = make_table("regression", rows=60)
    indices = _split(frame, SplitConfig(stratify=True), classification=False)

    _assert_partition(indices, 60)
    assert "stratified split impossible" in mlsmith_log.text
    assert "using a random split instead" in mlsmith_log.text


def test_zero_shares_keep_every_row_for_training() -> None:
    frame = make_table("binary", rows=50)
    indices = _split(frame, val=0.0, test=0.0)
    assert np.array_equal(indices.train, np.arange(50))
    assert len(indices.val) == len(indices.test) == 0


@pytest.mark.parametrize("classification", [True, False])
def test_too_few_rows_is_a_data_error(classification: bool) -> None:
    frame = make_table("binary", rows=40).groupby("label").head(1)
    with pytest.raises(DataError, match=r"table\.csv: cannot split 2 rows"):
        _split(frame, classification=classification)


# --- grouped ----------------------------------------------------------------------------------


def test_group_split_never_puts_a_group_in_two_splits() -> None:
    frame = make_table("binary", rows=300)
    rng = np.random.default_rng(0)
    frame["patient"] = rng.integers(0, 40, size=300)
    indices = _split(frame, SplitConfig(group="patient"), val=0.2, test=0.2)

    _assert_partition(indices, 300)
    groups = [set(frame["patient"].iloc[p]) for p in (indices.train, indices.val, indices.test)]
    assert all(groups)
    assert groups[0].isdisjoint(groups[1])
    assert groups[0].isdisjoint(groups[2])
    assert groups[1].isdisjoint(groups[2])
    assert set().union(*groups) == set(frame["patient"])
    again = _split(frame, SplitConfig(group="patient"), val=0.2, test=0.2)
    assert np.array_equal(indices.test, again.test)


def test_group_split_with_one_group_is_a_data_error() -> None:
    frame = make_table("binary", rows=30)
    frame["site"] = "only"
    with pytest.raises(DataError, match=r"table\.csv: cannot split 30 rows by groups of 'site'"):
        _split(frame, SplitConfig(group="site"))


# --- chronological ----------------------------------------------------------------------------


def _shuffled_dates(rows: int) -> pd.Series:
    dates = pd.date_range("2023-01-01", periods=rows, freq="D").strftime("%Y-%m-%d")
    return pd.Series(np.random.default_rng(1).permutation(dates.to_numpy()))


@pytest.mark.parametrize("kind", ["text-dates", "datetime", "numeric"])
def test_time_split_is_chronological(kind: str) -> None:
    frame = make_table("binary", rows=100)
    dates = _shuffled_dates(100)
    frame["when"] = {
        "text-dates": dates,
        "datetime": pd.to_datetime(dates),
        "numeric": pd.to_datetime(dates).map(lambda d: d.toordinal()),
    }[kind]
    indices = _split(frame, SplitConfig(time="when"), val=0.2, test=0.1)

    _assert_partition(indices, 100)
    assert (len(indices.train), len(indices.val), len(indices.test)) == (70, 20, 10)
    when = pd.to_datetime(dates)
    assert when.iloc[indices.train].max() < when.iloc[indices.val].min()
    assert when.iloc[indices.val].max() < when.iloc[indices.test].min()
    # Chronological splits ignore the seed.
    reseeded = _split(frame, SplitConfig(time="when"), val=0.2, test=0.1, seed=9)
    assert np.array_equal(indices.test, reseeded.test)


def test_time_split_on_text_that_is_not_dates() -> None:
    frame = make_table("binary", rows=20)
    frame["when"] = ["soon", "later"] * 10
    with pytest.raises(DataError) as info:
        _split(frame, SplitConfig(time="when"))
    message = str(info.value)
    assert "table.csv: time column 'when'" in message
    assert "neither numbers nor dates" in message and "'soon'" in message


def test_time_column_is_not_a_feature(tmp_path: Path) -> None:
    frame = make_table("binary", rows=80)
    frame["when"] = _shuffled_dates(80)
    frame.to_csv(tmp_path / "t.csv", index=False)
    config = load_config(
        {"data": {"path": str(tmp_path / "t.csv"), "target": "label", "split": {"time": "when"}}}
    )
    data = prepare(config)
    assert "when" not in data.preprocessor.features
    assert data.summary["rows"] == {"train": 56, "val": 12, "test": 12}


# --- fixed validation and test files ----------------------------------------------------------


def _files(tmp_path: Path) -> Callable[..., Path]:
    def write(name: str, rows: int, seed: int) -> Path:
        path = tmp_path / name
        make_table("binary", rows=rows, seed=seed).to_csv(path, index=False)
        return path

    return write


def test_fixed_val_and_test_files(tmp_path: Path) -> None:
    write = _files(tmp_path)
    main, val, test = write("main.csv", 120, 0), write("val.csv", 25, 1), write("test.csv", 35, 2)
    config = load_config(
        {
            "data": {
                "path": str(main),
                "target": "label",
                "val_path": str(val),
                "test_path": str(test),
            }
        }
    )
    data = prepare(config)

    assert data.summary["rows"] == {"train": 120, "val": 25, "test": 35}
    assert data.test is not None
    for split, path in ((data.val, val), (data.test, test)):
        expected = data.preprocessor.transform(pd.read_csv(path))
        for name, array in expected.items():
            np.testing.assert_array_equal(split.inputs[name], array)
    # Each file is part of the fingerprint.
    assert data.fingerprint.count("+") == 2


def test_fixed_val_file_only_splits_test_from_main(tmp_path: Path) -> None:
    write = _files(tmp_path)
    main, val = write("main.csv", 100, 0), write("val.csv", 30, 1)
    config = load_config(
        {
            "data": {
                "path": str(main),
                "target": "label",
                "val_path": str(val),
                "split": {"val": 0.3, "test": 0.2},
            }
        }
    )
    data = prepare(config)
    assert data.summary["rows"] == {"train": 80, "val": 30, "test": 20}


def test_fixed_test_file_only_splits_val_from_main(tmp_path: Path) -> None:
    write = _files(tmp_path)
    main, test = write("main.csv", 100, 0), write("test.csv", 30, 1)
    config = load_config(
        {
            "data": {
                "path": str(main),
                "target": "label",
                "test_path": str(test),
                "split": {"val": 0.25, "test": 0.4},
            }
        }
    )
    data = prepare(config)
    assert data.summary["rows"] == {"train": 75, "val": 25, "test": 30}
