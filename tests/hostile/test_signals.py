"""Signals against real `mlsmith` processes: SIGTERM and SIGINT during training and prediction,
kill -9 mid-write, signals at random moments, and a KeyboardInterrupt a library swallows."""

from __future__ import annotations

import json
import random
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from tests.conftest import CliResult, config_dict, make_table
from tests.hostile.conftest import temporaries, wait_for

import mlsmith
from mlsmith.tracking import default_uri
from mlsmith.training.checkpoint import load_checkpoint

EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}

# SIGINT and SIGTERM take one path once a command runs: mlsmith.cli.signals installs one handler
# for both, which raises Interrupted(signum) wherever the main thread is (neither the training
# loop, the DataLoader nor StatsForecast handles either itself); only the exit code and the
# word printed differ. Each context below therefore takes one of them, alternating, and the
# random moments (start-up included, before the handler is installed) take both.


def _long_training(tmp_path: Path, epochs: int = 300) -> tuple[Path, dict]:
    """A tracked config whose training runs for many seconds, in tiny epochs."""
    data = tmp_path / "data.csv"
    if not data.exists():
        make_table("binary", rows=240).to_csv(data, index=False)
    cfg = config_dict(data, tmp_path / "runs", track={"enabled": True})
    cfg["train"].update(epochs=epochs, preflight=False)
    cfg["train"]["early_stopping"] = {"enabled": False}
    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return config, cfg


def _start(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mlsmith", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run_dirs(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "runs" / "t").glob("*") if p.is_dir())


def _mlflow_status(tmp_path: Path, run_id: str) -> tuple[str, int | None]:
    run = MlflowClient(default_uri(tmp_path / "runs")).get_run(run_id)
    return run.info.status, run.info.end_time


# --- training -----------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM], ids=["sigterm"])
def test_a_signal_mid_training_stops_the_run_cleanly_and_says_how_to_resume(
    tmp_path: Path, signum: signal.Signals, cli: Callable[..., CliResult]
) -> None:
    config, _ = _long_training(tmp_path)
    process = _start("train", config, "--no-progress")
    try:
        wait_for(
            lambda: any((d / "history.csv").is_file() for d in _run_dirs(tmp_path)),
            90,
            "the first epoch",
        )
    finally:
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT[signum], stderr[-3000:]
    assert "Traceback" not in stderr
    (run_dir,) = _run_dirs(tmp_path)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted"
    status, end_time = _mlflow_status(tmp_path, info["mlflow_run_id"])
    assert status == "KILLED" and end_time is not None, (status, stderr[-3000:])
    assert ("terminated" if signum == signal.SIGTERM else "interrupted") in stderr
    assert not temporaries(tmp_path)
    load_checkpoint(run_dir / "checkpoints" / "last.pt")

    # The printed command continues the run (fewer epochs, which a resume may change, to be quick),
    # run by the CLI in this process: the signal was the other process's.
    match = re.search(r"continue it from its last checkpoint with: (mlsmith train .*)", stderr)
    assert match, stderr[-2000:]
    command = shlex.split(match.group(1))
    assert command[-2:] == ["--resume", str(run_dir)]
    epochs_done = len(pd.read_csv(run_dir / "history.csv"))
    resumed = cli(*command[1:], f"train.epochs={epochs_done + 2}")
    assert resumed.code == 0, resumed.stderr[-3000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished"
    assert len(pd.read_csv(run_dir / "history.csv")) == epochs_done + 2
    assert _mlflow_status(tmp_path, info["mlflow_run_id"])[0] == "FINISHED"


def test_signals_at_random_moments_leave_a_consistent_run(tmp_path: Path) -> None:
    """SIGTERM / SIGINT at seeded random moments from start-up to the end: whatever the moment,
    the run directory tells the truth, MLflow's run is closed, and no temporary file is left."""
    config, _ = _long_training(tmp_path, epochs=12)
    moments = random.Random(10).sample([i / 2 for i in range(2, 26)], 4)
    for i, delay in enumerate(sorted(moments)):
        signum = (signal.SIGTERM, signal.SIGINT)[i % 2]
        before = set(_run_dirs(tmp_path))
        process = _start("train", config, "--no-progress")
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
        assert "Traceback" not in stderr, stderr[-3000:]
        assert process.returncode in (0, EXIT[signum]), (delay, stderr[-3000:])
        new = sorted(set(_run_dirs(tmp_path)) - before)
        assert len(new) <= 1
        if process.returncode == 0:
            assert new, "exit 0 without a run directory"
        for run_dir in new:
            info = json.loads((run_dir / "run.json").read_text())
            expected = {"finished"} if process.returncode == 0 else {"interrupted", "finished"}
            assert info["status"] in expected, (delay, info["status"])
            if info.get("mlflow_run_id"):
                status = _mlflow_status(tmp_path, info["mlflow_run_id"])[0]
                assert status in ("FINISHED", "KILLED"), (delay, status)
            for checkpoint in (run_dir / "checkpoints").glob("*.pt"):
                load_checkpoint(checkpoint)
        assert not temporaries(tmp_path), (delay, temporaries(tmp_path))


def test_an_interrupt_a_library_swallows_still_ends_the_command_as_interrupted(
    tmp_path: Path,
) -> None:
    """A library that catches KeyboardInterrupt and carries on must not turn Ctrl-C into exit 0."""
    script = textwrap.dedent(
        """
        import os, signal, time
        import mlsmith.api

        def report(run):
            try:  # what a careless library does with Ctrl-C
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except KeyboardInterrupt:
                pass
            return []

        mlsmith.api.report = report
        from mlsmith.cli import main
        main(["report", "somewhere"])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 130, done.stderr
    assert "interrupted" in done.stderr and "Traceback" not in done.stderr


def test_an_interrupt_a_library_wraps_in_its_own_error_ends_the_command_as_interrupted(
    tmp_path: Path,
) -> None:
    """torch's distributed checkpoint turns the Interrupted it catches into a
    CheckpointException: after a signal, that error is the stop, not a crash (exit 143, no
    traceback)."""
    script = textwrap.dedent(
        """
        import os, signal, time
        import mlsmith.api

        def report(run):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except KeyboardInterrupt as stop:  # what torch.distributed.checkpoint does
                raise RuntimeError("CheckpointException ranks:dict_keys([0])") from stop
            return []

        mlsmith.api.report = report
        from mlsmith.cli import main
        main(["report", "somewhere"])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 143, done.stderr
    assert "terminated" in done.stderr and "Traceback" not in done.stderr


def test_an_error_without_a_signal_is_still_a_crash(tmp_path: Path) -> None:
    """The rule above must not hide real bugs: no signal, a traceback and exit 1."""
    script = textwrap.dedent(
        """
        import mlsmith.api

        def report(run):
            raise RuntimeError("a bug")

        mlsmith.api.report = report
        from mlsmith.cli import main
        main(["report", "somewhere"])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "RuntimeError: a bug" in done.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT], ids=["sigint"])
def test_a_signal_mid_backtest_stops_a_forecasting_run_cleanly(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """A forecasting run stopped while StatsForecast fits: exit 130/143 without a traceback,
    run.json interrupted, the MLflow run KILLED, no temporary file left."""
    import numpy as np

    rng = np.random.default_rng(0)
    frames = []
    # Enough series that the backtest outlasts the wait below on a fast machine (it took under
    # a second with 20 short ones on CI, so the signal found a finished run).
    for i in range(150):
        t = np.arange(240)
        y = 50 + i + 0.3 * t + 8 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 2, 240)
        months = pd.date_range("2000-01-01", periods=240, freq="MS").strftime("%Y-%m-%d")
        frames.append(pd.DataFrame({"id": f"s{i}", "month": months, "y": y}))
    pd.concat(frames).to_csv(tmp_path / "series.csv", index=False)
    config = tmp_path / "forecast.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "experiment": "t",
                "output_dir": str(tmp_path / "runs"),
                "data": {
                    "type": "timeseries",
                    "path": str(tmp_path / "series.csv"),
                    "target": "y",
                    "time_column": "month",
                    "id_column": "id",
                    "horizon": 12,
                },
                "model": {"type": "arima"},
            }
        )
    )
    process = _start("train", config)
    try:
        wait_for(
            lambda: any(
                "mlflow_run_id" in (d / "run.json").read_text()
                for d in _run_dirs(tmp_path)
                if (d / "run.json").is_file()
            ),
            90,
            "the tracked run",
        )
        time.sleep(0.5)  # inside the backtest
    finally:
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT[signum], stderr[-3000:]
    assert "Traceback" not in stderr
    [run_dir] = _run_dirs(tmp_path)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted", info
    assert _mlflow_status(tmp_path, info["mlflow_run_id"])[0] == "KILLED"
    assert not temporaries(tmp_path)


# --- prediction ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run, and a raw table big enough that predicting it takes several seconds."""
    root = tmp_path_factory.mktemp("predict")
    data = root / "train.csv"
    make_table("binary").to_csv(data, index=False)
    run = mlsmith.train(config_dict(data, root / "runs"), progress=False)
    big = root / "big.csv"
    pd.concat([make_table("binary", rows=50_000, seed=s) for s in range(8)]).to_csv(
        big, index=False
    )
    return run.path, big


def _start_predict(run: Path, source: Path, output: Path) -> subprocess.Popen[str]:
    return _start("predict", run, "--input", source, "--output", output, "--chunk-rows", "5000")


def test_sigterm_during_predict_leaves_no_temporary_and_the_old_output(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    run, big = trained
    output = tmp_path / "out" / "predictions.csv"
    output.parent.mkdir()
    output.write_text("previous predictions\n")
    process = _start_predict(run, big, output)
    try:
        wait_for(lambda: temporaries(output.parent), 90, "the temporary output")
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-3000:]
    assert "terminated" in stderr and "Traceback" not in stderr
    assert not temporaries(output.parent)
    assert output.read_text() == "previous predictions\n"


def test_a_kill_9_during_predict_leaves_a_temporary_the_next_write_sweeps(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    run, big = trained
    output = tmp_path / "predictions.csv"
    process = _start_predict(run, big, output)
    try:
        wait_for(lambda: temporaries(tmp_path), 90, "the temporary output")
    finally:
        process.kill()
        process.communicate(timeout=60)
    (left,) = temporaries(tmp_path)
    assert not output.exists()

    small = tmp_path / "small.csv"
    make_table("binary", rows=30).to_csv(small, index=False)
    assert mlsmith.predict(run, small, output) == 30
    assert not left.exists() and not temporaries(tmp_path)
    assert len(pd.read_csv(output)) == 30


# --- a streamed table: DataLoader workers reading chunks -----------------------------------------


def _processes_running(marker: str) -> list[int]:
    """PIDs of live processes whose command line holds ``marker`` (DataLoader workers are
    forks of the main process: they carry its command line)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = next(
                line
                for line in (proc / "status").read_text().splitlines()
                if line.startswith("State:")
            )
        except (OSError, StopIteration):
            continue
        if marker in cmdline and "Z" not in state.split()[1]:
            found.append(int(proc.name))
    return found


@pytest.mark.parametrize("signum", [signal.SIGINT], ids=["sigint"])
def test_a_signal_mid_streamed_training_stops_workers_and_resumes(
    tmp_path: Path, signum: signal.Signals, cli: Callable[..., CliResult]
) -> None:
    """data.stream: the signal reaches a main process whose DataLoader workers are reading
    chunks; the run stops cleanly, no worker is left behind, and the run resumes."""
    data = tmp_path / "big.csv"
    make_table("binary", rows=20_000).to_csv(data, index=False)
    cfg = config_dict(data, tmp_path / "runs", track={"enabled": True})
    cfg["data"].update(stream=True, chunk_rows=1000, num_workers=2, split={"stratify": False})
    cfg["train"].update(epochs=200, preflight=False, batch_size=64)
    cfg["train"]["early_stopping"] = {"enabled": False}
    config = tmp_path / "streamed.yaml"
    config.write_text(yaml.safe_dump(cfg))
    process = _start("train", config, "--no-progress")
    try:
        wait_for(
            lambda: any((d / "history.csv").is_file() for d in _run_dirs(tmp_path)),
            120,
            "the first epoch",
        )
        time.sleep(0.3)  # into the next epoch: its workers are reading
    finally:
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT[signum], stderr[-3000:]
    assert "Traceback" not in stderr
    wait_for(lambda: not _processes_running(str(config)), 10, "the DataLoader workers to exit")
    (run_dir,) = _run_dirs(tmp_path)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted"
    assert _mlflow_status(tmp_path, info["mlflow_run_id"])[0] == "KILLED"
    assert not temporaries(tmp_path)

    epochs_done = len(pd.read_csv(run_dir / "history.csv"))
    # Resumed by the CLI in this process (its DataLoader workers forked from it).
    more = f"train.epochs={epochs_done + 1}"
    resumed = cli("train", config, "--resume", run_dir, more, "--no-progress")
    assert resumed.code == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert len(pd.read_csv(run_dir / "history.csv")) == epochs_done + 1
