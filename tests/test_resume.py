"""Exact resume, end to end: `mlsmith train` is killed with SIGKILL, then `--resume` finishes it.

The resumed run must end bit-identical to a run that was never interrupted: same weights in
last.pt and best.pt, same history. Training shuffles, uses dropout and a warmup + cosine
schedule, so a missing RNG state or schedule step would show.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml
from tests.conftest import CliResult, config_dict, make_table

EPOCHS = 5
TIMING = ["samples_per_s", "epoch_time_s", "memory_mb"]
pytestmark = pytest.mark.slow


def write_config(directory: Path, data: Path, name: str, **train: Any) -> Path:
    """A run long enough to be killed mid-training: ~100 steps per epoch, 5 epochs."""
    config = config_dict(
        data,
        directory / f"runs-{name}",
        model={"hidden": [32], "dropout": 0.2},
        train={
            "epochs": EPOCHS,
            "batch_size": 8,
            "scheduler": {"name": "cosine", "warmup_epochs": 1},
            **train,
        },
        eval={"bootstrap": 0},
    )
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def command(config: Path, *args: str | Path) -> list[str]:
    return [sys.executable, "-m", "mlsmith", "train", str(config), *map(str, args), "--no-progress"]


def train(config: Path, *args: str | Path) -> Path:
    """Run `mlsmith train` in a fresh process to completion; returns the run directory."""
    done = subprocess.run(command(config, *args), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(done.stdout.strip().splitlines()[-1])


def output_dir(config: Path) -> Path:
    return Path(yaml.safe_load(config.read_text())["output_dir"])


def train_and_kill(config: Path, ready: Callable[[dict[str, Any]], bool], log: Path) -> Path:
    """Start training, SIGKILL it as soon as last.pt's loop state satisfies ``ready``."""
    with log.open("w") as stderr:
        process = subprocess.Popen(command(config), stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        found = wait_for_checkpoint(output_dir(config), process, ready, log)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return found.parent.parent


def wait_for_checkpoint(
    output: Path,
    process: subprocess.Popen[bytes],
    ready: Callable[[dict[str, Any]], bool],
    log: Path | None = None,
) -> Path:
    """The first ``last.pt`` under ``output`` whose loop state satisfies ``ready``, read each
    time it is replaced (a stat a few milliseconds apart: the training next door needs the
    CPU more than this loop does)."""
    deadline = time.monotonic() + 120
    seen: dict[Path, tuple[int, int]] = {}
    while True:
        if process.poll() is not None:
            told = log.read_text() if log is not None else ""
            raise AssertionError(f"training ended before the kill:\n{told}")
        assert time.monotonic() < deadline, "no checkpoint to kill at"
        for found in output.glob("*/*/checkpoints/last.pt"):
            try:
                stat = found.stat()
                if seen.get(found) == (stat.st_mtime_ns, stat.st_ino):
                    continue
                seen[found] = (stat.st_mtime_ns, stat.st_ino)
                if ready(torch.load(found, weights_only=True)["loop"]):
                    return found
            except (EOFError, RuntimeError, OSError):
                seen.pop(found, None)  # replaced while read: read it again
        time.sleep(0.005)


def model_weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / name, weights_only=True)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    for name in ("last.pt", "best.pt"):
        first, second = model_weights(a, name), model_weights(b, name)
        assert first.keys() == second.keys()
        for key in first:
            assert torch.equal(first[key], second[key]), f"{name}: {key} differs"


def history(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "history.csv").drop(columns=TIMING)


def info(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text())


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The data and one uninterrupted reference run (every_n_steps only changes what is
    saved, not the trajectory, so it serves both kill tests)."""
    directory = tmp_path_factory.mktemp("resume")
    data = directory / "data.csv"
    make_table("binary", rows=1200).to_csv(data, index=False)
    reference = train(write_config(directory, data, "reference"))
    return {"dir": directory, "data": data, "reference": reference}


def check_resumed_equals_reference(run_dir: Path, reference: Path) -> None:
    assert_same_weights(run_dir, reference)
    pd.testing.assert_frame_equal(history(run_dir), history(reference), check_exact=True)
    assert len(history(run_dir)) == EPOCHS
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    ref_last = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)
    assert last["loop"]["global_step"] == ref_last["loop"]["global_step"]
    assert last["schedule"] == ref_last["schedule"]
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(
        (reference / "metrics.json").read_text()
    )
    assert info(run_dir)["status"] == "finished"
    assert info(run_dir)["epochs_run"] == EPOCHS


def test_kill_at_an_epoch_boundary_then_resume_is_bit_identical(
    shared: dict[str, Path], tmp_path: Path
) -> None:
    config = write_config(tmp_path, shared["data"], "killed")
    run_dir = train_and_kill(config, lambda loop: loop["epoch"] >= 1, tmp_path / "killed.log")

    killed = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["loop"]
    assert 1 <= killed["epoch"] < EPOCHS and killed["step_in_epoch"] == 0
    assert info(run_dir)["status"] == "running"  # no chance to record anything else

    assert train(config, "--resume", run_dir) == run_dir
    check_resumed_equals_reference(run_dir, shared["reference"])


def test_kill_mid_epoch_then_resume_is_bit_identical(
    shared: dict[str, Path], tmp_path: Path
) -> None:
    """Killed inside epoch 2 (at least), after a mid-epoch last.pt (every 20 of ~105 steps)."""
    config = write_config(tmp_path, shared["data"], "killed", checkpoint={"every_n_steps": 20})
    run_dir = train_and_kill(
        config,
        lambda loop: loop["epoch"] >= 1 and loop["step_in_epoch"] > 0,
        tmp_path / "killed.log",
    )

    killed = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["loop"]
    assert 1 <= killed["epoch"] < EPOCHS and killed["step_in_epoch"] > 0
    assert killed["samples"] > 0  # the epoch's running loss was saved too

    train(config, "--resume", run_dir)
    check_resumed_equals_reference(run_dir, shared["reference"])


def test_resume_with_a_changed_config_key_is_refused(
    shared: dict[str, Path], tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    reference = shared["reference"]
    before = (reference / "checkpoints" / "last.pt").read_bytes()
    config = write_config(tmp_path, shared["data"], "reference")

    result = cli("train", config, "train.optimizer.lr=0.5", "--resume", reference)
    assert result.code == 2
    assert "train.optimizer.lr" in result.stderr
    assert "only train.epochs may change" in result.stderr

    edited = write_config(tmp_path, shared["data"], "edited", batch_size=16)
    result = cli("train", edited, "--resume", reference)
    assert result.code == 2
    assert "train.batch_size" in result.stderr and "run has 8, given 16" in result.stderr
    assert (reference / "checkpoints" / "last.pt").read_bytes() == before


def test_resume_of_a_directory_that_is_not_a_run(
    shared: dict[str, Path], tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    config = write_config(tmp_path, shared["data"], "reference")
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "missing"):
        result = cli("train", config, "--resume", target)
        assert result.code == 2
        assert "not a run directory" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "missing").exists()


def test_resume_a_finished_run_with_more_epochs_continues(
    shared: dict[str, Path], tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    run_dir = tmp_path / "copy"
    shutil.copytree(shared["reference"], run_dir)
    config = write_config(tmp_path, shared["data"], "reference")

    result = cli("train", config, f"train.epochs={EPOCHS + 2}", "--resume", run_dir)
    assert result.code == 0, result.stderr
    extended = history(run_dir)
    assert list(extended["epoch"]) == list(range(1, EPOCHS + 3))
    # The finished epochs are kept as they were; two more were trained on top.
    pd.testing.assert_frame_equal(
        extended.iloc[:EPOCHS], history(shared["reference"]), check_exact=True
    )
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["loop"]["epoch"] == EPOCHS + 2
    assert last["config"]["train"]["epochs"] == EPOCHS + 2
    reference_last = model_weights(shared["reference"], "last.pt")
    assert any(not torch.equal(last["model"][k], v) for k, v in reference_last.items())
    assert info(run_dir)["status"] == "finished" and info(run_dir)["epochs_run"] == EPOCHS + 2
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == EPOCHS + 2


def test_resume_a_finished_one_cycle_run_with_more_epochs(
    tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    """One-cycle stores its length: more epochs used to crash when stepping past it."""
    data = tmp_path / "data.csv"
    make_table("binary", rows=200).to_csv(data, index=False)
    config = tmp_path / "onecycle.yaml"
    raw = config_dict(
        data, tmp_path / "runs", train={"epochs": 2, "scheduler": {"name": "onecycle"}}
    )
    config.write_text(yaml.safe_dump({**raw, "eval": {"bootstrap": 0}}))
    first = cli("train", config)
    assert first.code == 0, first.stderr
    run_dir = Path(first.stdout.strip().splitlines()[-1])

    result = cli("train", config, "train.epochs=3", "--resume", run_dir)
    assert result.code == 0, result.stderr
    rows = history(run_dir)
    assert list(rows["epoch"]) == [1, 2, 3]
    assert rows["lr"].iloc[2] < rows["lr"].iloc[1] < 1e-3  # still annealing on the longer cycle
