"""The study loop: pruning, failing trials, best.yaml, MLflow runs, resume after kill -9 or
Ctrl-C (the stopped attempt re-queued), several workers on PostgreSQL, the CLI."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from tests.conftest import CliResult, config_dict
from tests.tuning.tune_data import LR_SPACE, PG_URL, needs_postgres, pg_storage, tune_config, write

from mlsmith.config import load_config


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
def test_study_resumes_after_kill(
    tmp_path: Path, stop: signal.Signals, cli: Callable[..., CliResult]
) -> None:
    """kill -9 or Ctrl-C after the first trial; the same command finishes the study, running
    the stopped trial's attempt again (the second time by the CLI in this process)."""
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
        assert code == 130, log.read_text()[-3000:]
        study = optuna.load_study(study_name="t", storage=storage)
        assert not [t for t in study.get_trials() if t.state.name == "RUNNING"]

    done = cli(*command[3:])
    assert done.code == 0, done.stderr[-2000:]
    trials = optuna.load_study(study_name="t", storage=storage).get_trials()
    # The budget: 4 trials finished (none fails on its own here: no pruning, a sane space). The
    # attempt the signal stopped, if it caught one, is a FAIL of its own, re-queued: a fresh
    # trial with the next number ran in its place.
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert all(t.state.is_finished() for t in trials)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    stopped = [t for t in trials if t.state.name != "COMPLETE"]
    summary = [(t.number, t.state.name, t.user_attrs.get("error")) for t in trials]
    assert len(complete) == 4 and len(stopped) <= 1, summary
    assert all(t.state.name == "FAIL" for t in stopped), summary
    if stop == signal.SIGINT:
        assert all(t.user_attrs["error"].startswith("interrupted by SIGINT") for t in stopped)
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


def test_interrupted_attempt_is_requeued_and_ordinary_failures_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM during a trial: that attempt fails and a fresh trial takes its place, counted
    apart; a trial that fails on its own (a NaN) counts toward the budget and is not retried."""
    import mlsmith
    import mlsmith.pipeline
    from mlsmith.errors import Interrupted

    cfg = tune_config(tmp_path, {"train.optimizer.lr": LR_SPACE}, trials=3, pruner="none")
    train = mlsmith.pipeline.run_training
    calls: list[int] = []

    def nan_then_sigterm(config: Any, **kwargs: Any) -> Any:
        calls.append(len(calls))
        if len(calls) == 1:
            raise ValueError("loss became nan")
        if len(calls) == 2:
            raise Interrupted(signal.SIGTERM)
        return train(config, **kwargs)

    monkeypatch.setattr(mlsmith.pipeline, "run_training", nan_then_sigterm)
    with pytest.raises(KeyboardInterrupt):
        mlsmith.tune(cfg)
    result = mlsmith.tune(cfg)  # the same call resumes the study

    trials = {t.number: t for t in result.trials}
    summary = {n: (t.state, t.error) for n, t in trials.items()}
    assert sorted(trials) == [0, 1, 2, 3], summary
    assert trials[0].state == "FAIL" and "nan" in (trials[0].error or ""), summary
    assert trials[1].state == "INTERRUPTED" and "SIGTERM" in (trials[1].error or ""), summary
    assert trials[2].state == trials[3].state == "COMPLETE", summary
    assert result.counts["COMPLETE"] + result.counts["FAIL"] == 3, result.counts
    assert result.counts["INTERRUPTED"] == 1 and len(calls) == 4, result.counts


@needs_postgres
def test_two_workers_on_postgres_run_exactly_the_budget(tmp_path: Path) -> None:
    import optuna

    import mlsmith

    name = f"test-{uuid.uuid4().hex[:8]}"
    # Enough trials that the second process (a few seconds to import torch) gets some.
    cfg = tune_config(tmp_path, {"train.optimizer.lr": LR_SPACE}, trials=10, pruner="none")
    cfg["train"]["epochs"] = 6
    try:
        result = mlsmith.tune(cfg, storage=PG_URL, study=name, workers=2)
        with pg_storage() as storage:
            trials = optuna.load_study(study_name=name, storage=storage).get_trials()
        assert sorted(t.number for t in trials) == list(range(10))
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        assert result.counts["COMPLETE"] == 10
        assert len({t.user_attrs["run_dir"] for t in trials}) == 10
        workers = [t.user_attrs["worker"] for t in trials]
        assert len(set(workers)) == 2, workers  # both processes really ran trials
    finally:
        with pg_storage() as storage:
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
