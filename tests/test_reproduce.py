"""``mlsmith reproduce``: a run again from its directory alone, on the same machine identical to
the last digit; a changed data file is exit 1 before any training; a version that differs from
the run's requirements.lock is named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from tests.conftest import config_dict, make_table

import mlsmith
from mlsmith.run import LOCK_FILE, read_lock


def _trained(tmp_path: Path) -> mlsmith.Run:
    make_table("binary", rows=200).to_csv(tmp_path / "data.csv", index=False)
    config = config_dict(tmp_path / "data.csv", tmp_path / "runs", train={"epochs": 2})
    return mlsmith.train(config, progress=False)


def test_a_run_reproduced_on_the_same_machine_is_identical(tmp_path: Path, cli: Any) -> None:
    run = _trained(tmp_path)
    header, packages = read_lock(run.path)
    assert header["python"] and packages["torch"] and packages["numpy"]
    assert (run.path / LOCK_FILE).read_text().count("==") == len(packages)
    result = cli("reproduce", run.path, "--output", tmp_path / "again")
    assert result.code == 0, result.stderr
    assert "identical test metrics" in result.stderr
    new_dir = Path(result.stdout.strip().splitlines()[-1])
    assert new_dir.parent.parent == tmp_path / "again" and new_dir != run.path
    old = json.loads((run.path / "metrics.json").read_text())["test"]
    new = json.loads((new_dir / "metrics.json").read_text())["test"]
    assert old == new  # every value and every interval, bit for bit
    assert read_lock(new_dir)[1] == packages


def test_changed_data_is_exit_1_before_training(tmp_path: Path, cli: Any) -> None:
    run = _trained(tmp_path)
    make_table("binary", rows=200, seed=5).to_csv(tmp_path / "data.csv", index=False)
    result = cli("reproduce", run.path, "--output", tmp_path / "again")
    assert result.code == 1
    assert "is not the data the run trained on" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "again").exists()


def test_versions_that_differ_from_the_lock_are_named(tmp_path: Path) -> None:
    run = _trained(tmp_path)
    lock = run.path / LOCK_FILE
    text = lock.read_text()
    _, packages = read_lock(run.path)
    lock.write_text(
        text.replace(f"numpy=={packages['numpy']}", "numpy==0.0.1") + "not-a-real-package==1.0\n"
    )
    result = mlsmith.reproduce(run, output=tmp_path / "again")
    assert f"numpy {packages['numpy']}, the run had 0.0.1" in result.environment
    assert "not-a-real-package is not installed, the run had 1.0" in result.environment
    assert result.identical  # versions noted, results still the same here
    assert {m.name for m in result.metrics} >= {"accuracy", "log_loss"}


def test_a_forecasting_run_reproduces_too(tmp_path: Path) -> None:
    from tests.forecasting.test_forecasting_run import forecast_config

    config = forecast_config(tmp_path)
    config["model"] = {"type": "theta"}
    run = mlsmith.train(config)
    assert (run.path / LOCK_FILE).is_file()
    result = mlsmith.reproduce(run.path, output=tmp_path / "again")
    assert result.identical and result.new.path != run.path
    assert yaml.safe_load((result.new.path / "config.yaml").read_text())["model"]["type"] == "theta"
