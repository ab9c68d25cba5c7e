"""Helpers for the hostile tests: real processes, a file barrier, real databases and servers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

WORKERS = Path(__file__).parent / "_workers.py"
PG_ADMIN_URL = os.environ.get("MLSMITH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


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


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


def temporaries(root: Path) -> list[Path]:
    """Hidden temporary files left anywhere under ``root``."""
    return sorted(p for p in root.rglob(".*.tmp") if p.is_file())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _postgres_reachable() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


needs_postgres = pytest.mark.skipif(
    not _postgres_reachable(), reason=f"no PostgreSQL reachable at {PG_ADMIN_URL} with psycopg 3"
)


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (MLflow and Optuna each want their own); its URL."""
    import psycopg

    name = f"mlsmith_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
