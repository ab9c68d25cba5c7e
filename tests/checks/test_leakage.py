"""Leakage checks: rows shared between splits, and single columns that give the target away."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from tests.checks.conftest import Prepare
from tests.conftest import make_table

from mlsmith.checks import CheckResult
from mlsmith.checks.data import _feature_columns
from mlsmith.checks.leakage import duplicates_across_splits, single_feature_leakage


def duplicates(prepare_table: Prepare, frame: pd.DataFrame, **options: Any) -> CheckResult:
    config, data = prepare_table(frame, **options)
    return duplicates_across_splits(config, data, _feature_columns(config, data))


def leakage(prepare_table: Prepare, frame: pd.DataFrame, **options: Any) -> CheckResult:
    config, data = prepare_table(frame, **options)
    return single_feature_leakage(config, data, _feature_columns(config, data))


# --- duplicates -------------------------------------------------------------------------------


def test_rows_repeated_across_splits_fail_with_count_and_examples(prepare_table: Prepare) -> None:
    table = make_table("binary", rows=100)
    tripled = pd.concat([table] * 3, ignore_index=True)  # every row three times
    result = duplicates(prepare_table, tripled)
    assert result.status == "fail"
    detail = result.detail
    assert "val rows" in detail and "also in train, e.g. rows " in detail
    assert "test rows" in detail


def test_a_few_shared_rows_warn(prepare_table: Prepare) -> None:
    train = make_table("binary", rows=200)
    val = make_table("binary", rows=60, seed=1)
    val.iloc[7] = train.iloc[3]  # one copied row: 1.7% of val
    test = make_table("binary", rows=60, seed=2)
    result = duplicates(prepare_table, train, val=val, test=test)
    assert result.status == "warn"
    assert result.detail.startswith("1 of 60 val rows (1.7%) also in train, e.g. rows 7")


def test_no_shared_rows_pass(prepare_table: Prepare) -> None:
    result = duplicates(prepare_table, make_table("binary"))
    assert result.status == "pass"


# --- single-feature leakage -------------------------------------------------------------------


def test_a_copy_of_the_label_fails_naming_the_column(prepare_table: Prepare) -> None:
    frame = make_table("binary", rows=400)
    frame["outcome_code"] = frame["label"].map({"no": "N", "yes": "Y"})  # categorical copy
    result = leakage(prepare_table, frame)
    assert result.status == "fail"
    assert "'outcome_code' (balanced accuracy 1.000)" in result.detail


def test_the_label_plus_tiny_noise_fails(prepare_table: Prepare) -> None:
    frame = make_table("multiclass", rows=400)
    codes = frame["label"].map({"lo": 0, "mid": 1, "hi": 2}).to_numpy(dtype=float)
    frame["score"] = codes + np.random.default_rng(0).normal(scale=0.01, size=len(frame))
    result = leakage(prepare_table, frame)
    assert result.status == "fail"
    assert "'score'" in result.detail
    assert "x1" not in result.detail


def test_a_rescaled_regression_target_fails_with_its_r2(prepare_table: Prepare) -> None:
    frame = make_table("regression", rows=400)
    frame["cents"] = frame["label"] * 100 + np.random.default_rng(0).normal(size=len(frame))
    result = leakage(prepare_table, frame)
    assert result.status == "fail"
    assert "'cents' (R² 1.000)" in result.detail


def test_a_perfect_column_on_a_tiny_val_split_only_warns(prepare_table: Prepare) -> None:
    frame = make_table("binary", rows=120)  # 18 val rows: a perfect score may be chance
    frame["copy"] = frame["label"]
    result = leakage(prepare_table, frame)
    assert result.status == "warn"
    assert "only 18 val rows" in result.detail


def test_honest_features_pass_and_the_best_is_named(prepare_table: Prepare) -> None:
    result = leakage(prepare_table, make_table("binary", rows=400))
    assert result.status == "pass"
    assert "(best: 'x" in result.detail and "balanced accuracy 0." in result.detail


def test_leakage_is_fast_on_a_wide_table(prepare_table: Prepare) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(6000, 250)), columns=[f"f{i}" for i in range(250)])
    frame["label"] = rng.integers(0, 2, size=6000)
    config, data = prepare_table(frame, parquet=True)
    started = time.perf_counter()
    result = single_feature_leakage(config, data, _feature_columns(config, data))
    assert time.perf_counter() - started < 3.0  # ~0.2 s; generous for a busy machine
    assert result.status == "pass"
    assert "(first 200 of 250 columns)" in result.detail
