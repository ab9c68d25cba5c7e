"""Data and split checks: each one tripped by data built for it, and passing on a clean table."""

from __future__ import annotations

import numpy as np
import pandas as pd
from tests.checks.conftest import Prepare
from tests.conftest import make_table

from mlsmith.checks import CheckResult
from mlsmith.checks.data import data_checks, split_sizes, target_distribution
from mlsmith.data.base import Split
from mlsmith.tasks import BinaryTask


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


def test_a_clean_table_passes_every_data_and_split_check(prepare_table: Prepare) -> None:
    config, data = prepare_table(make_table("binary", rows=400))
    results = by_name(data_checks(config, data))
    assert list(results) == [
        "target present",
        "task",
        "constant columns",
        "missing values",
        "split sizes",
        "class balance",
        "classes in every split",
        "duplicates across splits",
        "single-feature leakage",
    ]
    assert {r.status for r in results.values()} == {"pass"}, results
    assert results["task"].detail == "binary: 2 classes 'no', 'yes' (inferred)"
    assert results["split sizes"].detail == "train 279, val 61, test 60 rows"
    assert "x2" in results["missing values"].detail  # the column with the most gaps is named
    assert results["class balance"].group == "splits"


def test_a_configured_task_says_so(prepare_table: Prepare) -> None:
    config, data = prepare_table(make_table("regression"), data={"task": "regression"})
    results = by_name(data_checks(config, data))
    assert results["task"].detail.startswith("regression, train mean ")
    assert results["task"].detail.endswith("(configured)")
    assert results["target distribution"].status == "pass"
    assert results["classes in every split"].status == "skip"


def test_a_constant_column_warns_by_name(prepare_table: Prepare) -> None:
    frame = make_table("binary").assign(version=3.0, source="web")
    config, data = prepare_table(frame)
    result = by_name(data_checks(config, data))["constant columns"]
    assert result.status == "warn"
    assert "version" in result.detail and "source" in result.detail


def test_a_mostly_missing_column_warns_with_its_share(prepare_table: Prepare) -> None:
    frame = make_table("binary", rows=400)
    frame["sparse"] = np.where(np.arange(400) % 10 < 7, np.nan, 1.5)  # 70% missing
    config, data = prepare_table(frame)
    result = by_name(data_checks(config, data))["missing values"]
    assert result.status == "warn"
    assert "sparse 7" in result.detail and "%" in result.detail  # ~70% on the training rows


def test_a_class_absent_from_val_warns(prepare_table: Prepare) -> None:
    frame = make_table("multiclass", rows=300)
    val = make_table("multiclass", rows=200, seed=1)
    val = val[val["label"] != "hi"]
    config, data = prepare_table(frame, val=val)
    results = by_name(data_checks(config, data))
    assert results["classes in every split"].status == "warn"
    assert "val has no rows of 'hi'" in results["classes in every split"].detail
    # No 'hi' in val is also a distribution far from train's.
    assert results["class balance"].status == "warn"
    assert "val differs from train" in results["class balance"].detail


def test_a_rare_class_warns_and_suggests_a_balanced_monitor() -> None:
    task = BinaryTask(["no", "yes"])
    labels = pd.Series(["no"] * 97 + ["yes"] * 3, name="label")
    frames = {"train": labels.to_frame(), "val": labels.to_frame()}
    result = target_distribution(task, frames, "label")
    assert result.status == "warn"
    assert "'yes' is only 3.0% of train" in result.detail
    assert "balanced_accuracy" in result.detail


def test_many_classes_are_summarised_in_one_line(prepare_table: Prepare) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=300), "label": np.arange(300) % 6})
    config, data = prepare_table(frame)
    result = by_name(data_checks(config, data))["class balance"]
    assert result.status == "pass"
    assert result.detail.startswith("6 classes, train shares ")


def test_an_empty_validation_split_fails(prepare_table: Prepare) -> None:
    _, data = prepare_table(make_table("binary"))
    data.val = Split({k: v[:0] for k, v in data.val.inputs.items()}, data.val.target[:0])
    result = split_sizes(data)
    assert result.status == "fail"
    assert result.detail == "train 168, val 0, test 36 rows: val empty"
