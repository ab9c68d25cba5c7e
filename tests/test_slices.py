"""eval.slices: the test split's metrics per slice, with intervals, the gap and the too-small
flag, in metrics.json, the report and the model card; and the errors a slice config can meet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from tests.conftest import config_dict, make_table

import mlsmith
from mlsmith.slices import SliceSettings, slice_labels, slice_metrics


def test_slices_are_scored_per_category_and_per_numeric_bin() -> None:
    rng = np.random.default_rng(0)
    n = 400
    group = np.where(rng.random(n) < 0.5, "a", "b").astype(object)
    group[:10] = "tiny"
    truth = rng.integers(0, 2, n)
    # The model is right on group a, at chance on group b.
    proba_1 = np.where(group == "a", truth, rng.random(n)).astype(float)
    outputs = np.stack([1 - proba_1, proba_1], axis=1)
    age = pd.Series(rng.uniform(0, 100, n))
    report = slice_metrics(
        "binary",
        truth,
        outputs,
        {"group": pd.Series(group), "age": age},
        SliceSettings(bins=4, min_rows=30, n_resamples=200),
    )
    groups = report["group"]
    assert groups["metric"] == "accuracy"
    assert groups["slices"]["a"]["metrics"]["accuracy"]["value"] == 1.0
    assert groups["slices"]["b"]["metrics"]["accuracy"]["value"] < 0.7
    low, high = groups["slices"]["b"]["metrics"]["accuracy"]["ci95"]
    assert low < groups["slices"]["b"]["metrics"]["accuracy"]["value"] < high
    assert groups["slices"]["tiny"]["too_small"] and groups["slices"]["tiny"]["rows"] == 10
    gap = groups["gap"]
    assert gap["highest"] == "a" and gap["lowest"] == "b" and gap["value"] > 0.3
    # A numeric column with many values: 4 quantile bins of about 100 rows each.
    bins = report["age"]["slices"]
    assert len(bins) == 4 and all(90 <= s["rows"] <= 110 for s in bins.values())


def test_missing_values_and_few_distinct_numbers_are_their_own_slices() -> None:
    labels = slice_labels(pd.Series([1.0, 2.0, None, 1.0]), bins=4)
    assert list(labels) == ["1.0", "2.0", "(missing)", "1.0"]


def test_a_run_with_slices_records_them_in_metrics_report_and_card(tmp_path: Path) -> None:
    make_table("binary", rows=400).to_csv(tmp_path / "data.csv", index=False)
    config = config_dict(
        tmp_path / "data.csv",
        tmp_path / "runs",
        eval={"slices": ["color", "size"], "report": True, "min_slice_rows": 20},
    )
    run = mlsmith.train(config, progress=False)
    metrics = json.loads((run.path / "metrics.json").read_text())
    colors = metrics["slices"]["color"]
    assert set(colors["slices"]) == {"red", "green", "blue"}
    assert sum(s["rows"] for s in colors["slices"].values()) == len(
        pd.read_csv(run.path / "test_predictions.csv")
    )
    assert "ci95" in colors["slices"]["red"]["metrics"]["accuracy"]
    assert len(metrics["slices"]["size"]["slices"]) == 4  # 1..99: quantile bins
    card = (run.path / "MODEL_CARD.md").read_text()
    ethics = card.split("## Ethical considerations")[1].split("## Owners")[0]
    assert "Measured per group on the test split" in ethics and "'color'" in ethics
    html = (run.path / "report.html").read_text()
    assert 'id="slices"' in html and "Slices of &#x27;color&#x27;" in html


def _write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"slices": ["colour"]}, "eval.slices: the test split has no column 'colour'"),
        ({"slice_bins": 1}, "eval.slice_bins"),
    ],
)
def test_slice_errors_are_exit_2_naming_the_key(
    tmp_path: Path, cli: Any, settings: dict[str, Any], message: str
) -> None:
    make_table("binary", rows=100).to_csv(tmp_path / "data.csv", index=False)
    config = config_dict(tmp_path / "data.csv", tmp_path / "runs", eval=settings)
    result = cli("train", _write(tmp_path, config))
    assert result.code == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "runs" / "t").exists()


def test_a_forecast_refuses_slices(tmp_path: Path) -> None:
    from tests.forecasting.test_forecasting_run import forecast_config

    config = forecast_config(tmp_path)
    config["eval"]["slices"] = ["store"]
    with pytest.raises(mlsmith.ConfigError, match="a forecast is scored per series"):
        mlsmith.load_config(config)
