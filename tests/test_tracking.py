"""MLflow tracking against a real SQLite store: what is logged, and surviving a broken store."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient
from tests.conftest import config_dict, make_table

import mlsmith
from mlsmith.config import TrackConfig
from mlsmith.evaluation import CLASSIFICATION_METRICS
from mlsmith.tracking import Tracker, default_uri, run_tags

EPOCHS = 3


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at_least(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@pytest.fixture
def logs() -> Iterator[dict[str, _Records]]:
    """Records of the 'mlsmith' and 'mlflow' loggers, whatever their propagation settings."""
    handlers = {name: _Records() for name in ("mlsmith", "mlflow")}
    for name, handler in handlers.items():
        logging.getLogger(name).addHandler(handler)
    yield handlers
    for name, handler in handlers.items():
        logging.getLogger(name).removeHandler(handler)


def _git(cwd: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    command += ["-c", "commit.gpgsign=false", *args]
    return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tracked run, trained from inside a fresh git repository (the project)."""
    root = tmp_path_factory.mktemp("tracking")
    project = root / "project"
    project.mkdir()
    data = project / "data.csv"
    make_table("binary").to_csv(data, index=False)
    commit = None
    try:
        _git(project, "init", "-q")
        _git(project, "add", "data.csv")
        _git(project, "commit", "-q", "-m", "data")
        commit = _git(project, "rev-parse", "HEAD").strip()
    except (OSError, subprocess.CalledProcessError):
        pass  # no usable git: the commit tag is not checked
    config = config_dict(data, root / "runs", track={"enabled": True})
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        run = mlsmith.train(config, progress=False)
    uri = default_uri(root / "runs")
    client = MlflowClient(uri)
    return {
        "root": root,
        "run": run,
        "commit": commit,
        "uri": uri,
        "client": client,
        "mlflow_run": client.get_run(run.info["mlflow_run_id"]),
    }


def test_run_json_points_at_the_mlflow_run(tracked: dict[str, Any]) -> None:
    run, mlflow_run = tracked["run"], tracked["mlflow_run"]
    assert (tracked["root"] / "runs" / "mlflow.db").is_file()
    assert run.info["tracking_uri"] == tracked["uri"]
    assert mlflow_run.info.run_id == run.info["mlflow_run_id"]
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.info.run_name == run.id
    experiment = tracked["client"].get_experiment(mlflow_run.info.experiment_id)
    assert experiment.name == run.config.experiment
    # Artifacts live beside the store, not in the working directory.
    artifacts = (tracked["root"] / "runs" / "mlartifacts").resolve().as_uri()
    assert experiment.artifact_location == artifacts


def test_params_are_the_flattened_config(tracked: dict[str, Any]) -> None:
    run = tracked["run"]
    params = tracked["mlflow_run"].data.params
    expected = {key: str(value) for key, value in run.config.flat().items()}
    assert params == expected
    assert len(params) > 50  # more than one log_batch's worth would still be complete
    assert params["train.epochs"] == str(EPOCHS)
    assert params["model.hidden"] == "[16]"


def test_per_epoch_metrics_have_one_value_per_epoch(tracked: dict[str, Any]) -> None:
    client, run_id = tracked["client"], tracked["mlflow_run"].info.run_id
    history = tracked["run"].history
    keys = ["train/loss", "val/loss", "lr", "samples_per_s"]
    keys += [f"val/{name}" for name in CLASSIFICATION_METRICS]
    for key in keys:
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        assert [m.step for m in points] == list(range(1, EPOCHS + 1)), key
        for point, expected in zip(points, history[key], strict=True):
            if math.isnan(expected):
                assert math.isnan(point.value), key
            else:
                assert point.value == pytest.approx(expected, rel=1e-6), key
    # Bookkeeping columns are not metrics.
    logged = tracked["mlflow_run"].data.metrics
    assert "epoch" not in logged and "step" not in logged


def test_final_metrics_with_confidence_intervals(tracked: dict[str, Any]) -> None:
    run = tracked["run"]
    client, run_id = tracked["client"], tracked["mlflow_run"].info.run_id
    logged = tracked["mlflow_run"].data.metrics
    recorded = json.loads((run.path / "metrics.json").read_text())
    for name, entry in recorded["test"].items():
        assert logged[f"test/{name}"] == pytest.approx(entry["value"]), name
        low, high = entry["ci95"]
        assert logged[f"test/{name}_ci95_low"] == pytest.approx(low), name
        assert logged[f"test/{name}_ci95_high"] == pytest.approx(high), name
    # Validation intervals are logged too (its point values are already per epoch).
    for name, entry in recorded["val"].items():
        assert logged[f"val/{name}_ci95_low"] == pytest.approx(entry["ci95"][0]), name
    # Logged once, at the step of the best epoch.
    points = client.get_metric_history(run_id, "test/accuracy")
    assert [m.step for m in points] == [run.info["best_epoch"]]


def test_artifacts_are_the_run_files(tracked: dict[str, Any], tmp_path: Path) -> None:
    run = tracked["run"]
    client, run_id = tracked["client"], tracked["mlflow_run"].info.run_id
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "metrics.json", "history.csv", "preprocessing.json", "best.pt"} <= names
    for name, local in [
        ("metrics.json", run.path / "metrics.json"),
        ("config.yaml", run.path / "config.yaml"),
        ("best.pt", run.path / "checkpoints" / "best.pt"),
    ]:
        copy = Path(client.download_artifacts(run_id, name, str(tmp_path)))
        assert copy.read_bytes() == local.read_bytes(), name


def test_tags_identify_code_data_and_hardware(tracked: dict[str, Any]) -> None:
    run = tracked["run"]
    tags = tracked["mlflow_run"].data.tags
    assert tags["mlsmith.data_fingerprint"] == run.info["data_fingerprint"]
    assert tags["mlsmith.version"] == mlsmith.__version__
    assert tags["torch.version"] == importlib.metadata.version("torch")
    assert tags["mlsmith.device"] == run.info["environment"]["device"]
    assert tags["mlsmith.device"].split(":")[0] in ("cpu", "cuda", "mps")
    assert tags["mlsmith.run_dir"] == str(run.path)
    assert tags["mlsmith.code_version"].startswith(f"mlsmith {mlsmith.__version__}")
    if tracked["commit"] is None:
        pytest.skip("git is not usable here: no commit to compare")
    assert tags["mlflow.source.git.commit"] == tracked["commit"]
    assert run.info["environment"]["project_git"] == {"commit": tracked["commit"], "dirty": False}
    assert f"project {tracked['commit'][:12]}" in tags["mlsmith.code_version"]


def test_no_commit_tag_outside_a_git_repository() -> None:
    environment = {
        "mlsmith": "0.1.0",
        "device": "cpu",
        "packages": {"torch": "2.0"},
        "project_git": None,
        "mlsmith_git": None,
    }
    tags = run_tags(Path("/r"), "abc", environment)
    assert "mlflow.source.git.commit" not in tags
    assert tags["mlsmith.code_version"] == "mlsmith 0.1.0"


# --- failures ---------------------------------------------------------------------------------


def _assert_complete(run: mlsmith.Run) -> None:
    assert run.info["status"] == "finished"
    assert set(run.metrics) == {"val", "test"}
    assert len(pd.read_csv(run.path / "history.csv")) == EPOCHS
    assert (run.path / "checkpoints" / "best.pt").is_file()
    assert (run.path / "checkpoints" / "last.pt").is_file()


def test_unusable_tracking_uri_warns_and_training_finishes(
    tmp_path: Path, logs: dict[str, _Records]
) -> None:
    data = tmp_path / "data.csv"
    make_table("binary").to_csv(data, index=False)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's directory should be")
    uri = f"sqlite:///{blocker / 'mlflow.db'}"
    run = mlsmith.train(config_dict(data, tmp_path / "runs", track={"uri": uri, "enabled": True}))
    _assert_complete(run)
    assert run.info["mlflow_run_id"] is None and run.info["tracking_uri"] is None
    warnings = logs["mlsmith"].at_least(logging.WARNING)
    assert len(warnings) == 1, warnings
    assert "MLflow tracking" in warnings[0] and "training continues" in warnings[0]
    assert blocker.read_text().startswith("a file")
    assert not (tmp_path / "runs" / "mlflow.db").exists()


@pytest.mark.parametrize("breakage", ["garbage", "dropped-tables"])
def test_store_breaking_mid_run_warns_once_and_disables_tracking(
    tracked: dict[str, Any], tmp_path: Path, logs: dict[str, _Records], breakage: str
) -> None:
    database = tmp_path / "mlflow.db"
    # A copy of a working store: creating one from scratch costs seconds of schema migrations.
    shutil.copyfile(tracked["root"] / "runs" / "mlflow.db", database)
    tracker = Tracker(TrackConfig(), output_dir=tmp_path, experiment="e")
    assert tracker.uri == default_uri(tmp_path)
    run_id = tracker.start(run_name="r", params={"a": 1, "b": "x"}, tags={"k": "v"})
    assert run_id is not None and tracker.active
    tracker.on_epoch_end(
        SimpleNamespace(step_rows=[], layer_names=[], layer_rows=[]),
        {"epoch": 1, "step": 4, "train/loss": 0.5},
    )  # type: ignore[arg-type]
    stored = MlflowClient(tracker.uri).get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in stored] == [(1, 0.5)]

    if breakage == "garbage":
        database.write_bytes(b"this is not a database" * 512)
    else:
        with sqlite3.connect(database) as connection:
            connection.execute("PRAGMA foreign_keys = OFF")
            tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            for (table,) in tables.fetchall():
                connection.execute(f'DROP TABLE "{table}"')
        connection.close()

    # None of these may raise.
    tracker.on_epoch_end(
        SimpleNamespace(step_rows=[], layer_names=[], layer_rows=[]),
        {"epoch": 2, "step": 8, "train/loss": 0.4},
    )  # type: ignore[arg-type]
    tracker.log_metrics({"test/accuracy": 0.9}, step=2)
    tracker.log_artifacts([database])
    tracker.set_tags({"late": "tag"})
    tracker.finish("FINISHED")

    assert not tracker.active
    warnings = logs["mlsmith"].at_least(logging.WARNING)
    assert len(warnings) == 1, warnings
    assert "MLflow tracking failed" in warnings[0] and "training continues" in warnings[0]
    # One line from mlsmith, not MLflow's own error log with a traceback.
    assert logs["mlflow"].at_least(logging.ERROR) == []


def test_failed_training_marks_the_mlflow_run_failed(
    tracked: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "runs").mkdir()
    shutil.copyfile(tracked["root"] / "runs" / "mlflow.db", tmp_path / "runs" / "mlflow.db")
    data = tmp_path / "data.csv"
    make_table("binary").to_csv(data, index=False)
    config = config_dict(
        data,
        tmp_path / "runs",
        experiment="broken",
        track={"enabled": True},
        train={"early_stopping": {"monitor": "val/acuracy"}},
    )
    with pytest.raises(mlsmith.ConfigError, match="val/acuracy"):
        mlsmith.train(config)
    (run_dir,) = (tmp_path / "runs" / "broken").iterdir()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed"
    client = MlflowClient(default_uri(tmp_path / "runs"))
    mlflow_run = client.get_run(info["mlflow_run_id"])
    assert mlflow_run.info.status == "FAILED"
    assert mlflow_run.info.end_time is not None
    assert mlflow_run.data.params["train.early_stopping.monitor"] == "val/acuracy"


def test_tracking_disabled_creates_no_store(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    make_table("binary").to_csv(data, index=False)
    run = mlsmith.train(config_dict(data, tmp_path / "runs", track={"enabled": False}))
    _assert_complete(run)
    assert run.info["mlflow_run_id"] is None
    assert not (tmp_path / "runs" / "mlflow.db").exists()
    assert not (tmp_path / "runs" / "mlartifacts").exists()
    tracker = Tracker(TrackConfig(enabled=False), output_dir=tmp_path, experiment="e")
    assert tracker.client is None
    assert tracker.start(run_name="r", params={}, tags={}) is None
    assert not tracker.active
    assert not (tmp_path / "mlflow.db").exists()
