"""Tracking stores under fire: processes starting together, a kill while a store is created, a
store left half-made by an older version, PostgreSQL, an unreachable server and one that dies
mid-run. Every test uses real processes and real stores."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from tests.conftest import config_dict, make_table
from tests.hostile.conftest import (
    free_port,
    needs_postgres,
    release,
    start_workers,
    temporaries,
    wait_for,
)

import mlsmith
from mlsmith.config import TrackConfig
from mlsmith.tracking import Tracker, default_uri

WORKERS = 4
ROUNDS = 5


def _runs_in(uri: str) -> dict[str, str]:
    """run id -> status of every run in the store at ``uri``."""
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_id: r.info.status for r in client.search_runs(experiments)}


def _collect(processes: list[subprocess.Popen[str]], timeout: float = 240) -> list[dict]:
    rows = []
    for process in processes:
        out, err = process.communicate(timeout=timeout)
        assert process.returncode == 0, err[-3000:]
        rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return rows


# --- processes starting together on a fresh store ---------------------------------------------


def test_four_processes_on_a_fresh_store_all_track_every_time(tmp_path: Path) -> None:
    """4 processes released together at a fresh SQLite store, 5 rounds: every run tracked."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    processes = start_workers(
        [["tracker", str(barrier), str(i), str(ROUNDS), str(tmp_path)] for i in range(WORKERS)],
        tmp_path,
    )
    for round_ in range(ROUNDS):
        release(barrier, WORKERS, round_)
    rows = _collect(processes)
    assert len(rows) == WORKERS * ROUNDS
    for round_ in range(ROUNDS):
        ids = [r["run_id"] for r in rows if r["round"] == round_]
        assert None not in ids, f"round {round_}: a run was not tracked: {rows}"
        stored = _runs_in(default_uri(tmp_path / f"round-{round_}"))
        assert sorted(stored) == sorted(ids)
        assert set(stored.values()) == {"FINISHED"}
    assert not temporaries(tmp_path)


def test_four_cli_trainings_started_together_are_all_tracked(tmp_path: Path) -> None:
    """The real `mlsmith train` entry point in 4 processes behind one barrier."""
    data = tmp_path / "data.csv"
    make_table("binary", rows=120).to_csv(data, index=False)
    config = tmp_path / "c.yaml"
    cfg = config_dict(data, tmp_path / "runs", track={"enabled": True})
    cfg["train"].update(epochs=2, preflight=False)
    config.write_text(yaml.safe_dump(cfg))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    processes = start_workers(
        [["train", str(barrier), str(i), str(config)] for i in range(WORKERS)], tmp_path
    )
    release(barrier, WORKERS, 0)
    rows = _collect(processes)
    assert [r["code"] for r in rows] == [0] * WORKERS
    run_dirs = sorted((tmp_path / "runs" / "t").iterdir())
    assert len(run_dirs) == WORKERS
    infos = [json.loads((d / "run.json").read_text()) for d in run_dirs]
    assert all(i["mlflow_run_id"] for i in infos), "a run was not tracked"
    stored = _runs_in(default_uri(tmp_path / "runs"))
    assert sorted(stored) == sorted(i["mlflow_run_id"] for i in infos)
    assert set(stored.values()) == {"FINISHED"}


# --- a kill while the store is being created ----------------------------------------------------


@pytest.mark.parametrize("delay", [0.0, 0.8, 1.6])
def test_kill_during_store_creation_never_breaks_the_store(tmp_path: Path, delay: float) -> None:
    """kill -9 while MLflow builds the schema: the next run creates the store and is tracked."""
    data = tmp_path / "data.csv"
    make_table("binary", rows=120).to_csv(data, index=False)
    cfg = config_dict(data, tmp_path / "runs", track={"enabled": True})
    cfg["train"].update(epochs=2, preflight=False)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    runs = tmp_path / "runs"
    process = subprocess.Popen(
        [sys.executable, "-m", "mlsmith", "train", str(config), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: list(runs.glob(".mlflow.db.*.tmp")), 60, "the store's creation")
        time.sleep(delay)
    finally:
        process.kill()
        _, err = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, err.decode()[-2000:]
    store = runs / "mlflow.db"
    if store.exists():  # the kill came after the rename: the store must be whole
        assert _runs_in(default_uri(runs)) is not None

    run = mlsmith.train(cfg, progress=False)
    assert run.info["mlflow_run_id"], "the run after the kill was not tracked"
    assert _runs_in(default_uri(runs))[run.info["mlflow_run_id"]] == "FINISHED"
    # The store's own temporaries are swept by the next store user. A kill that lands after
    # the store is made may also leave a temporary in the killed run's folder (its run.json
    # mid-write): the file it was replacing is whole, and that folder's next write sweeps it.
    stray = [t for t in temporaries(runs) if t.parent == runs]
    assert not stray, "the killed process's temporary store was not swept"
    for record in runs.glob("t/*/run.json"):
        json.loads(record.read_text())  # whole, never half-written


# --- stores left incomplete by older versions ---------------------------------------------------


@pytest.fixture(scope="module")
def complete_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete, empty SQLite store, copied by the tests (creating one costs seconds)."""
    root = tmp_path_factory.mktemp("store")
    tracker = Tracker(TrackConfig(), output_dir=root, experiment="seed")
    assert tracker.client is not None
    return root / "mlflow.db"


def _older_revision() -> str:
    from mlsmith.tracking.store import _schema_revisions

    head, known = _schema_revisions()
    import mlflow
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory(str(Path(mlflow.__file__).parent / "store" / "db_migrations"))
    down = scripts.get_revision(head).down_revision
    assert isinstance(down, str) and down in known
    return down


def _break(store: Path) -> None:
    """What a kill mid-migration leaves: an older schema revision, a half-copied table."""
    with sqlite3.connect(store) as db:
        db.execute("UPDATE alembic_version SET version_num = ?", (_older_revision(),))
        db.execute("CREATE TABLE _alembic_tmp_runs (x INTEGER)")
    db.close()


def test_an_incomplete_store_without_runs_is_set_aside_and_rebuilt(
    complete_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copyfile(complete_store, runs / "mlflow.db")
    _break(runs / "mlflow.db")
    data = tmp_path / "data.csv"
    make_table("binary", rows=120).to_csv(data, index=False)
    cfg = config_dict(data, runs, track={"enabled": True})
    with caplog.at_level(logging.WARNING, logger="mlsmith"):
        run = mlsmith.train(cfg, progress=False)
    assert run.info["mlflow_run_id"]
    assert _runs_in(default_uri(runs)) == {run.info["mlflow_run_id"]: "FINISHED"}
    (aside,) = runs.glob("mlflow.db.incomplete-*")
    assert "moved it to" in caplog.text and aside.name in caplog.text


def test_an_incomplete_store_holding_runs_is_left_alone(
    complete_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    store = runs / "mlflow.db"
    shutil.copyfile(complete_store, store)
    Tracker(TrackConfig(), output_dir=runs, experiment="old").start(
        run_name="precious", params={}, tags={}
    )
    _break(store)
    before = store.read_bytes()
    data = tmp_path / "data.csv"
    make_table("binary", rows=120).to_csv(data, index=False)
    with caplog.at_level(logging.WARNING, logger="mlsmith"):
        run = mlsmith.train(config_dict(data, runs, track={"enabled": True}), progress=False)
    assert run.info["status"] == "finished" and run.info["mlflow_run_id"] is None
    assert store.read_bytes() == before, "a store holding runs was modified"
    assert "holds 1 runs" in caplog.text and "mlflow db upgrade" in caplog.text


# --- PostgreSQL ---------------------------------------------------------------------------------


@needs_postgres
def test_postgresql_store_with_a_bare_url(tmp_path: Path, pg_database: str) -> None:
    """track.uri: postgresql://... tracks (psycopg 3), and 4 processes create it safely."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    processes = start_workers(
        [["tracker", str(barrier), str(i), "1", str(tmp_path), pg_database] for i in range(4)],
        tmp_path,
    )
    release(barrier, 4, 0)
    ids = [r["run_id"] for r in _collect(processes)]
    assert None not in ids

    data = tmp_path / "data.csv"
    make_table("binary", rows=120).to_csv(data, index=False)
    cfg = config_dict(data, tmp_path / "runs", track={"enabled": True, "uri": pg_database})
    run = mlsmith.train(cfg, progress=False)
    run_id = run.info["mlflow_run_id"]
    assert run_id and run.info["tracking_uri"] == pg_database
    stored = MlflowClient(pg_database).get_run(run_id)
    assert stored.info.status == "FINISHED"
    assert "test/accuracy" in stored.data.metrics
    assert sorted(_runs_in(pg_database)) == sorted([*ids, run_id])


# --- servers that are not there, or go away ------------------------------------------------------


def test_an_unreachable_server_costs_seconds_not_minutes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    tracker = Tracker(TrackConfig(uri=uri), output_dir=tmp_path, experiment="e")
    assert time.monotonic() - started < 5
    assert tracker.client is None

    data = tmp_path / "data.csv"
    make_table("binary", rows=120).to_csv(data, index=False)
    started = time.monotonic()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mlsmith"):
        run = mlsmith.train(
            config_dict(data, tmp_path / "runs", track={"enabled": True, "uri": uri})
        )
    assert time.monotonic() - started < 30
    assert run.info["status"] == "finished" and run.info["mlflow_run_id"] is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "no MLflow server answers" in warnings[0]


def _mlflow_server_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("mlflow.server.fastapi_app") is not None and bool(
        shutil.which("mlflow")
    )


@pytest.mark.skipif(not _mlflow_server_installed(), reason="needs the full mlflow ([ui] extra)")
def test_a_server_killed_mid_run_costs_at_most_15_seconds(tmp_path: Path) -> None:
    port = free_port()
    command = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
    command += ["--default-artifact-root", str(tmp_path / "server-artifacts")]
    server = subprocess.Popen(
        command,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its workers share its process group: one kill stops all
    )
    try:
        from mlsmith.tracking.store import check_server

        def up() -> bool:
            try:
                check_server(f"http://127.0.0.1:{port}", timeout=1)
                return True
            except Exception:
                return False

        wait_for(up, 90, "mlflow server")
        data = tmp_path / "data.csv"
        make_table("binary", rows=240).to_csv(data, index=False)
        uri = f"http://127.0.0.1:{port}"
        cfg = config_dict(data, tmp_path / "runs", track={"enabled": True, "uri": uri})
        cfg["train"].update(epochs=8, preflight=False)
        cfg["train"]["early_stopping"] = {"enabled": False}
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump(cfg))
        process = subprocess.Popen(
            [sys.executable, "-m", "mlsmith", "train", str(config), "--no-progress"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stderr is not None
        lines, killed_at = [], None
        for line in process.stderr:
            lines.append(line)
            if line.startswith("epoch 1/") and killed_at is None:
                os.killpg(server.pid, signal.SIGKILL)
                killed_at = time.monotonic()
        out = process.communicate(timeout=120)[0]
        ended_at = time.monotonic()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    stderr = "".join(lines)
    assert killed_at is not None, stderr[-3000:]
    assert process.returncode == 0, stderr[-3000:]
    # Seven more tiny epochs, evaluation and the end of tracking fit in 15 s with room to spare;
    # MLflow's own retries (7, exponential backoff) would take minutes.
    assert ended_at - killed_at < 15, stderr[-3000:]
    assert stderr.count("MLflow tracking failed") == 1, stderr[-3000:]
    run_dir = Path(out.strip().splitlines()[-1])
    assert run_dir.is_dir()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["mlflow_run_id"]
    assert len(pd.read_csv(run_dir / "history.csv")) == 8
    assert "test" in json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "checkpoints" / "best.pt").is_file()
