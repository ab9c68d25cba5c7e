"""Fixtures for the server tests: one tiny trained run with its package, and real server
processes on 127.0.0.1 started through the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from tests.conftest import config_dict, make_table

import mlsmith

READY = "mlsmith serve: listening on "


@dataclass
class ServedRun:
    path: Path
    rows: pd.DataFrame  # raw feature rows (no label)
    labels: pd.Series


def _train(root: Path, seed: int, hidden: list[int]) -> ServedRun:
    frame = make_table("binary", rows=300)
    frame.to_csv(root / "data.csv", index=False)
    raw = config_dict(root / "data.csv", root / "runs", train={"epochs": 3, "batch_size": 32})
    raw |= {"experiment": "clf", "seed": seed, "export": {"package": True}}
    raw["model"]["hidden"] = hidden
    # Tracked to <root>/runs/mlflow.db, so the runs can be registered (models:/ references).
    raw["track"] = {"enabled": True}
    run = mlsmith.train(raw, progress=False, epoch_lines=False)
    return ServedRun(run.path, frame.drop(columns="label"), frame["label"])


@pytest.fixture(scope="session")
def serving_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="session")
def served_run(serving_root: Path) -> ServedRun:
    """A binary classifier on numeric and categorical columns (with gaps), with its package."""
    return _train(serving_root, seed=0, hidden=[16])


@pytest.fixture(scope="session")
def second_run(serving_root: Path, served_run: ServedRun) -> ServedRun:
    """Another model of the same data and inputs (another seed and width), in the same store."""
    return _train(serving_root, seed=1, hidden=[4])


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str
    stderr_lines: list[str]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def start_server(
    args: list[str], *, timeout: float = 60, env: dict[str, str] | None = None
) -> Server:
    """``mlsmith serve ARGS --port 0`` in a new process; returns once it listens."""
    command = [sys.executable, "-m", "mlsmith", "serve", *args]
    if "--port" not in args:
        command += ["--port", "0"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stderr is not None
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            if process.poll() is not None:
                raise AssertionError(f"server exited {process.returncode}: {''.join(lines)}")
            continue
        lines.append(line)
        if line.startswith(READY):
            url = line[len(READY) :].split()[0]
            _drain_stderr(process, lines)
            return Server(process, url, lines)
    process.kill()
    raise AssertionError(f"server not ready after {timeout} s: {''.join(lines)}")


def _drain_stderr(process: subprocess.Popen[str], lines: list[str]) -> None:
    """Keep reading the server's stderr so it never blocks on a full pipe."""
    import threading

    def pump() -> None:
        assert process.stderr is not None
        with process.stderr:  # closed by the reader at the end, never under its feet
            for line in process.stderr:
                lines.append(line)

    threading.Thread(target=pump, daemon=True).start()


@pytest.fixture
def server_factory() -> Iterator[Callable[..., Server]]:
    """Start servers; each is stopped (SIGTERM, then killed) at the end of the test."""
    started: list[Server] = []

    def start(args: list[str], **kwargs: object) -> Server:
        server = start_server(args, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)


@pytest.fixture(scope="module")
def server(served_run: ServedRun) -> Iterator[Server]:
    """One server on the run, shared by a module's read-only tests."""
    started = start_server([str(served_run.path)])
    yield started
    if started.process.poll() is None:
        started.process.kill()
        started.process.wait(10)
