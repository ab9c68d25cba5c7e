"""``mlsmith compare``: the differing config keys, headline metrics, one HTML page."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tests.conftest import CliResult
from tests.reports.report_data import PNG_SIGNATURE, png_payloads, train_tabular

import mlsmith
from mlsmith.errors import ConfigError, RunError
from mlsmith.reports.compare import compare_runs
from mlsmith.reports.runinfo import format_ci, load_record


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two binary runs on the same data and output folder, differing only in the LR."""
    root = tmp_path_factory.mktemp("compare")
    return (
        train_tabular(root, "binary", train={"epochs": 2, "optimizer": {"lr": 0.001}}),
        train_tabular(root, "binary", train={"epochs": 2, "optimizer": {"lr": 0.01}}),
    )


def test_only_the_differing_key_is_listed(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    result = compare_runs(list(two_runs), tmp_path / "out" / "cmp.html")
    assert result.differences == {"train.optimizer.lr": ["0.001", "0.01"]}
    assert result.runs == [p.name for p in two_runs] and result.splits == ["test", "test"]
    assert list(result.metrics)[:2] == ["accuracy", "balanced_accuracy"]
    test_accuracy = load_record(two_runs[1]).metrics["test"]["accuracy"]
    assert result.metric_cell("accuracy", 1).endswith(format_ci(test_accuracy))

    html = result.output.read_text(encoding="utf-8")
    assert result.output == (tmp_path / "out" / "cmp.html").resolve()
    assert "train.optimizer.lr" in html and "train.epochs" not in html
    images = png_payloads(html)
    assert len(images) == 2 and all(i.startswith(PNG_SIGNATURE) for i in images)
    assert "http://" not in html and "https://" not in html


def test_the_api_and_the_default_output(
    two_runs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = mlsmith.compare([mlsmith.load_run(two_runs[0]), str(two_runs[1])])
    assert result.output == tmp_path / "compare.html" and result.output.is_file()


def test_same_run_twice_has_no_differences(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    result = compare_runs([two_runs[0], two_runs[0]], tmp_path / "same.html")
    assert result.differences == {}
    assert result.runs == [f"1: t/{two_runs[0].name}", f"2: t/{two_runs[0].name}"]
    assert "none: same config" in result.output.read_text()


def test_user_errors(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 2 run directories, got 1"):
        compare_runs([two_runs[0]], tmp_path / "x.html")
    with pytest.raises(RunError, match="not a run directory"):
        compare_runs([two_runs[0], tmp_path], tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()


def test_cli_compare(
    cli: Callable[..., CliResult], two_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    output = tmp_path / "page.html"
    result = cli("compare", *two_runs, "--output", output)
    assert result.code == 0, result.stderr
    assert "train.optimizer.lr" in result.stdout and "0.01" in result.stdout
    assert "accuracy" in result.stdout and "test metrics (95% CI)" in result.stdout
    assert "train.epochs" not in result.stdout
    assert result.stdout.strip().splitlines()[-1] == str(output) and output.is_file()

    one = cli("compare", two_runs[0])
    assert one.code == 2 and "at least 2 run directories" in one.stderr
    wrong = cli("compare", two_runs[0], tmp_path)
    assert wrong.code == 2 and "not a run directory" in wrong.stderr
    assert "Traceback" not in one.stderr + wrong.stderr
