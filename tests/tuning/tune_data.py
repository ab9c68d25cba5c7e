"""Shared by the tuning tests: fast tune configs, PostgreSQL, and worker processes released
together by a file barrier."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import config_dict, make_table

# A bare postgresql:// URL: SQLAlchemy 2.1 opens it with psycopg 3, the [postgres] extra's driver,
# so the URL mlsmith is given works unchanged in Optuna itself.
PG_URL = os.environ.get("MLSMITH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
LR_SPACE = {"type": "float", "low": 1e-7, "high": 1e-1, "log": True}
WORKERS = Path(__file__).parent / "_workers.py"


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


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3):
            return True
    except Exception:
        return False


needs_postgres = pytest.mark.skipif(
    not postgres_available(), reason=f"no PostgreSQL reachable at {PG_URL} with psycopg 3"
)


@contextlib.contextmanager
def pg_storage(url: str = PG_URL) -> Iterator[Any]:
    """Optuna's own storage on the bare URL, its connections closed afterwards."""
    import optuna

    storage = optuna.storages.RDBStorage(url)
    try:
        yield storage
    finally:
        storage.engine.dispose()


def start_workers(args: list[list[str]], cwd: Path) -> list[subprocess.Popen[str]]:
    """Start ``python _workers.py ARGS`` for each argument list."""
    return [
        subprocess.Popen(
            [sys.executable, str(WORKERS), *a],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for a in args
    ]


def release(barrier: Path, workers: int, round_: int, timeout: float = 120) -> None:
    """Wait until every worker is ready for ``round_``, then let them all go at once."""
    deadline = time.monotonic() + timeout
    while len(list(barrier.glob(f"ready-{round_}-*"))) < workers:
        assert time.monotonic() < deadline, f"workers not ready for round {round_}"
        time.sleep(0.01)
    (barrier / f"go-{round_}").touch()


def outputs(processes: list[subprocess.Popen[str]], timeout: float = 180) -> list[str]:
    """Each worker's stdout, once it exited 0."""
    results = []
    for process in processes:
        out, err = process.communicate(timeout=timeout)
        assert process.returncode == 0, err[-3000:]
        results.append(out)
    return results
