"""Feature importance: permutation on the validation split with intervals (every tabular
family), the boosted trees' gain, in importance.json and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import config_dict, make_table

import mlsmith


def _table(tmp_path: Path, kind: str = "binary") -> Path:
    frame = make_table(kind, rows=600)
    # A column the target never depends on.
    frame["noise"] = make_table(kind, rows=600, seed=7)["x1"]
    frame.to_csv(tmp_path / "data.csv", index=False)
    return tmp_path / "data.csv"


@pytest.mark.parametrize("family", ["mlp", "lightgbm"])
def test_permutation_importance_finds_the_signal_and_not_the_noise(
    tmp_path: Path, family: str
) -> None:
    pytest.importorskip("lightgbm")
    config = config_dict(_table(tmp_path), tmp_path / "runs", train={"epochs": 15})
    if family == "lightgbm":
        config["model"] = {"type": "lightgbm", "n_estimators": 60}
    run = mlsmith.train(config, progress=False)
    record = json.loads((run.path / "importance.json").read_text())
    permutation = record["permutation"]
    assert permutation["metric"] == "accuracy" and permutation["repeats"] == 5
    scores = {f["name"]: f for f in permutation["features"]}
    assert set(scores) == {"x1", "x2", "size", "noise", "color"}
    # x1 carries most of the signal: shuffling it costs accuracy, beyond its interval's low end.
    assert permutation["features"][0]["name"] == "x1"
    assert scores["x1"]["ci95"][0] > 0.05
    assert abs(scores["noise"]["importance"]) < scores["x1"]["importance"] / 3
    low, high = scores["x1"]["ci95"]
    assert low <= scores["x1"]["importance"] <= high
    if family == "lightgbm":
        gain = record["gain"]
        assert abs(sum(gain.values()) - 1.0) < 1e-6 and max(gain, key=gain.get) == "x1"
    else:
        assert "gain" not in record


def test_regression_importance_is_the_rmse_it_costs_and_repeats_0_turns_it_off(
    tmp_path: Path,
) -> None:
    config = config_dict(_table(tmp_path, "regression"), tmp_path / "runs", train={"epochs": 10})
    run = mlsmith.train(config, progress=False)
    permutation = json.loads((run.path / "importance.json").read_text())["permutation"]
    assert permutation["metric"] == "rmse"
    assert permutation["features"][0]["name"] in ("x1", "x2")
    assert permutation["features"][0]["importance"] > 0
    off = config_dict(tmp_path / "data.csv", tmp_path / "runs2", eval={"importance_repeats": 0})
    assert not (mlsmith.train(off, progress=False).path / "importance.json").exists()


def test_the_report_shows_the_importance(tmp_path: Path) -> None:
    config = config_dict(
        _table(tmp_path), tmp_path / "runs", train={"epochs": 5}, eval={"report": True}
    )
    run = mlsmith.train(config, progress=False)
    html = (run.path / "report.html").read_text()
    assert 'id="importance"' in html and "Permutation importance" in html
    markdown = (run.path / "REPORT.md").read_text()
    assert "## Feature importance" in markdown and "| x1 |" in markdown
