"""`mlsmith tune`: search space checks, pruning, failing trials, best.yaml, resume after
kill -9, several workers on PostgreSQL, MLflow parent and nested runs, the CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from tests.conftest import CliResult, config_dict, make_table

from mlsmith.config import load_config
from mlsmith.errors import ConfigError

# A bare postgresql:// URL: SQLAlchemy 2.1 opens it with psycopg 3, the [postgres] extra's driver,
# so the URL mlsmith is given works unchanged in Optuna itself.
PG_URL = os.environ.get("MLSMITH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
LR_SPACE = {"type": "float", "low": 1e-7, "high": 1e-1, "log": True}


def tune_config(tmp_path: Path, space: dict[str, Any], **tune: Any) -> dict[str, Any]:
    data = tmp_path / "data.csv"
    if not data.exists():
        make_table("binary", rows=160).to_csv(data, index=False)
    cfg = config_dict(data, tmp_path / "runs", tune={"space": space, **tune})
    cfg["train"].update(epochs=3, preflight=False)
    cfg["train"]["early_stopping"] = {"enabled": False}
    cfg["eval"]["bootstrap"] = 0
    return cfg


def write(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# --- the search space -------------------------------------------------------------------------


def test_space_keys_and_ranges_are_checked(tmp_path: Path) -> None:
    from mlsmith.tuning import tune_section

    cfg = load_config(tune_config(tmp_path, {"train.optimzer.lr": LR_SPACE}))
    with pytest.raises(
        ConfigError, match=r"train\.optimzer\.lr.*did you mean 'train\.optimizer\.lr'"
    ):
        tune_section(cfg)
    with pytest.raises(ConfigError, match="low must be < high"):
        load_config(tune_config(tmp_path, {"train.optimizer.lr": {"low": 1.0, "high": 0.1}}))
    with pytest.raises(ConfigError, match="log needs low > 0"):
        load_config(
            tune_config(
                tmp_path, {"train.batch_size": {"type": "int", "low": 0, "high": 8, "log": True}}
            )
        )
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(
            tune_config(
                tmp_path, {"train.batch_size": {"type": "int", "low": 1, "high": 8, "stp": 2}}
            )
        )
    no_tune = config_dict(tmp_path / "data.csv", tmp_path / "runs")
    with pytest.raises(ConfigError, match="needs a 'tune' section"):
        tune_section(load_config(no_tune))


def test_list_choices_round_trip(tmp_path: Path) -> None:
    import optuna

    from mlsmith.tuning import apply_params, decode_params, suggest

    space = {"model.hidden": {"type": "categorical", "choices": [[8], [16, 8], None]}}
    cfg = load_config(tune_config(tmp_path, space))
    param = cfg.tune.space["model.hidden"]  # type: ignore[union-attr]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(12):
        trial = study.ask()
        value = suggest(trial, "model.hidden", param)
        assert value in ([8], [16, 8], None)
        assert decode_params(cfg.tune.space, trial.params)["model.hidden"] == value  # type: ignore[union-attr]
        study.tell(trial, 0.0)
        seen.append(value)
    assert [8] in seen and [16, 8] in seen
    assert apply_params(cfg, {"model.hidden": [16, 8]}).model.hidden == [16, 8]  # type: ignore[union-attr]


# --- a study ----------------------------------------------------------------------------------


def test_study_prunes_fails_tracks_and_best_reproduces(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    import mlsmith

    space = {
        "train.optimizer.lr": LR_SPACE,
        # 0 units is not a valid layer: that trial's config cannot be built and must FAIL.
        "model.hidden": {"type": "categorical", "choices": [[16], [0]]},
    }
    cfg = tune_config(tmp_path, space, trials=7, startup_trials=1, sampler="random")
    cfg["train"]["epochs"] = 4
    cfg["track"] = {"enabled": True}
    result = mlsmith.tune(cfg)

    assert sum(result.counts.values()) == 7
    assert result.counts["FAIL"] >= 1 and result.counts["PRUNED"] >= 1, result.counts
    failed = [t for t in result.trials if t.state == "FAIL"]
    assert all(
        t.params["model.hidden"] == [0] and "model.hidden" in (t.error or "") for t in failed
    )
    assert result.report is not None and "data:image/png;base64," in result.report.read_text()

    # best.yaml is a complete config that reproduces the best trial's metric.
    assert result.best_config is not None
    best = load_config(result.best_config)
    assert best.tune is None and best.model.hidden == result.best_params["model.hidden"]  # type: ignore[union-attr]
    run = mlsmith.train(result.best_config, ["track.enabled=false"])
    history = pd.read_csv(run.path / "history.csv")
    assert history["val/loss"].min() == pytest.approx(result.best_value, rel=1e-6, abs=1e-9)

    # MLflow: one parent run for the study, a nested run per trial that trained.
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("t")
    assert experiment is not None
    parents = client.search_runs([experiment.experiment_id], "tags.`mlsmith.study` = 't'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent_id = parents[0].info.run_id
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )
    trained = [t for t in result.trials if t.state != "FAIL"]
    assert len(children) == len(trained)
    statuses = {c.data.tags["mlsmith.trial"]: c.info.status for c in children}
    for t in trained:
        assert statuses[str(t.number)] == ("KILLED" if t.state == "PRUNED" else "FINISHED")


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_study_resumes_after_kill(tmp_path: Path, stop: signal.Signals) -> None:
    """kill -9 or Ctrl-C after the first trial; the same command finishes the study."""
    import optuna

    # Trials long enough, and enough of them, that the process is still busy when the first one
    # is seen finished (a signal after the study's last trial only finds results being printed).
    cfg = tune_config(tmp_path, {"train.optimizer.lr": LR_SPACE}, trials=4, pruner="none")
    cfg["train"]["epochs"] = 10
    path = write(tmp_path, cfg)
    database = tmp_path / "runs" / "t" / "optuna.db"
    storage = f"sqlite:///{database}"
    command = [sys.executable, "-m", "mlsmith", "tune", str(path)]
    log = tmp_path / "first.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        # Polled read-only with sqlite3: opening the storage through Optuna would create its
        # schema, racing the tune process doing the same.
        deadline = time.monotonic() + 60
        while not _finished_trials(database) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _finished_trials(database), f"no trial finished in 60 s: {log.read_text()[-2000:]}"
        assert process.poll() is None, "the study finished before it could be stopped"
    finally:
        process.send_signal(stop)
        code = process.wait(timeout=60)
    first = [
        t
        for t in optuna.load_study(study_name="t", storage=storage).get_trials()
        if t.state.is_finished()
    ]
    assert first
    if stop == signal.SIGINT:
        # Ctrl-C: a clean stop (exit 130), the trial in progress recorded, not left RUNNING.
        assert code == 130
        study = optuna.load_study(study_name="t", storage=storage)
        assert not [t for t in study.get_trials() if t.state.name == "RUNNING"]

    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    trials = optuna.load_study(study_name="t", storage=storage).get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state.is_finished() for t in trials)
    kept = {t.number: t for t in trials}
    for t in first:
        assert kept[t.number].state == t.state and kept[t.number].params == t.params
    assert "best:" in done.stdout


def _finished_trials(database: Path) -> int:
    """Trials in a final state, read without creating anything (0 before the schema exists)."""
    import sqlite3

    if not database.exists():
        return 0
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
        ) as db:
            row = db.execute(
                "SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED', 'FAIL')"
            ).fetchone()
    except sqlite3.Error:  # the schema is being created (a busy writer is waited for)
        return 0
    return int(row[0])


def _postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3):
            return True
    except Exception:
        return False


@contextlib.contextmanager
def _pg_storage() -> Iterator[Any]:
    """Optuna's own storage on the bare URL, its connections closed afterwards."""
    import optuna

    storage = optuna.storages.RDBStorage(PG_URL)
    try:
        yield storage
    finally:
        storage.engine.dispose()


@pytest.mark.skipif(not _postgres_available(), reason=f"no PostgreSQL at {PG_URL}")
def test_two_workers_on_postgres_run_exactly_the_budget(tmp_path: Path) -> None:
    import optuna

    import mlsmith

    name = f"test-{uuid.uuid4().hex[:8]}"
    # Enough trials that the second process (a few seconds to import torch) gets some.
    cfg = tune_config(tmp_path, {"train.optimizer.lr": LR_SPACE}, trials=10, pruner="none")
    cfg["train"]["epochs"] = 6
    try:
        result = mlsmith.tune(cfg, storage=PG_URL, study=name, workers=2)
        with _pg_storage() as storage:
            trials = optuna.load_study(study_name=name, storage=storage).get_trials()
        assert sorted(t.number for t in trials) == list(range(10))
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        assert result.counts["COMPLETE"] == 10
        assert len({t.user_attrs["run_dir"] for t in trials}) == 10
        workers = [t.user_attrs["worker"] for t in trials]
        assert len(set(workers)) == 2, workers  # both processes really ran trials
    finally:
        with _pg_storage() as storage:
            optuna.delete_study(study_name=name, storage=storage)


# --- the CLI ----------------------------------------------------------------------------------


def test_cli(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    bad = write(tmp_path, tune_config(tmp_path, {"train.optimizer.lrr": LR_SPACE}))
    result = cli("tune", bad)
    assert result.code == 2 and "did you mean 'train.optimizer.lr'" in result.stderr

    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(config_dict(tmp_path / "data.csv", tmp_path / "runs")))
    result = cli("tune", plain)
    assert result.code == 2 and "tune:" in result.stderr

    good = write(tmp_path, tune_config(tmp_path, {"train.optimizer.lr": LR_SPACE}, trials=5))
    result = cli("tune", good, "train.epochs=2", "--trials", "2", "--study", "cli")
    assert result.code == 0, result.stderr
    assert "study cli" in result.stdout and "COMPLETE" in result.stdout
    assert result.stdout.strip().splitlines()[-1].endswith("tune-cli/best.yaml")
