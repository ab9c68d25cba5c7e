"""``mlsmith check`` in process: the table, the exit codes, and --json."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from tests.conftest import CliResult, config_dict, make_table

Cli = Callable[..., CliResult]


@pytest.fixture
def clean_config(tmp_path: Path) -> Path:
    data = tmp_path / "clean.csv"
    make_table("binary").to_csv(data, index=False)
    return write(tmp_path / "clean.yaml", data, tmp_path)


@pytest.fixture
def leaky_config(tmp_path: Path) -> Path:
    frame = make_table("binary", rows=400)
    frame["diagnosis_code"] = frame["label"].map({"no": 0, "yes": 1})
    data = tmp_path / "leaky.csv"
    frame.to_csv(data, index=False)
    return write(tmp_path / "leaky.yaml", data, tmp_path)


def write(path: Path, data: Path, tmp_path: Path) -> Path:
    raw = config_dict(data, tmp_path / "runs", model={"hidden": [64, 32]})
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_clean_config_prints_the_table_and_exits_0(cli: Cli, clean_config: Path) -> None:
    result = cli("check", clean_config)
    assert result.code == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "Check" in line)
    assert "Status" in header and "Detail" in header
    row = next(line for line in lines if "model: one-batch overfit" in line)
    assert "pass" in row and "steps on 32 rows" in row
    assert "OK: 18 pass" in result.stdout
    # Progress goes to stderr, results to stdout.
    assert "check: reading and splitting the data" in result.stderr
    assert "check: reading" not in result.stdout


def test_a_leaky_dataset_exits_1_naming_the_failing_check(cli: Cli, leaky_config: Path) -> None:
    result = cli("check", leaky_config, "--quick")
    assert result.code == 1, result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines() if "single-feature leakage" in line)
    assert "fail" in row and "'diagnosis_code' (balanced accuracy 1.000)" in row
    assert "FAILED: " in result.stdout and "1 fail" in result.stdout


def test_json_output_parses_and_matches_the_report(cli: Cli, leaky_config: Path) -> None:
    import mlsmith

    result = cli("check", leaky_config, "train.epochs=5", "--json", "--quick")
    assert result.code == 1
    state = json.loads(result.stdout)
    expected = mlsmith.check(leaky_config, ["train.epochs=5"], quick=True).to_dict()
    assert state["quick"] is True
    assert [(r["group"], r["name"], r["status"]) for r in state["results"]] == [
        (r["group"], r["name"], r["status"]) for r in expected["results"]
    ]
    (failure,) = [r for r in state["results"] if r["status"] == "fail"]
    assert failure["name"] == "single-feature leakage"
    cost = next(r for r in state["results"] if r["group"] == "cost")
    assert "x 5 epochs" in cost["detail"]


def test_a_bad_config_key_exits_2(cli: Cli, clean_config: Path) -> None:
    result = cli("check", clean_config, "train.optimzer.lr=1e-3")
    assert result.code == 2
    assert "error: invalid configuration" in result.stderr
    assert "did you mean 'optimizer'" in result.stderr
    assert result.stdout == ""
