"""Data-parallel training on real processes: torchrun, gloo on the CPU, two ranks.

Every test here starts real worker processes (``torchrun`` or ``mlsmith train`` with
``train.distributed.nproc=2``) and reads what they wrote: the run directory, run.json, MLflow,
the checkpoints' weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from mlsmith.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.timeout(240)


def _env() -> dict[str, str]:
    # One thread per rank (as the launcher sets it): two ranks on a 2-core machine.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(*args: str | Path, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={nproc}", "-m", "mlsmith", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=200)


def _mlsmith(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mlsmith", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=200)


def _runs(output: Path) -> list[Path]:
    return sorted(p for p in output.glob("t/*") if (p / "config.yaml").is_file())


def _weights(run: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / name)["model"]  # type: ignore[no-any-return]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-6), (
            key,
            (a[key] - b[key]).abs().max(),
        )


def test_two_processes_train_track_and_report_one_run(
    tmp_path: Path, table_csv: Callable[..., Path], write_config: Callable[..., Path]
) -> None:
    """``train.distributed.nproc=2``: mlsmith starts torchrun itself; rank 0 writes one run,
    tracked in MLflow with its report, and run.json states the world and the global batch."""
    store = tmp_path / "mlflow.db"
    config = write_config(
        table_csv("multiclass"),
        track={"enabled": True, "uri": f"sqlite:///{store}"},
        eval={"report": True},
    )
    result = _mlsmith("train", config, "train.distributed.nproc=2", "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = _runs(tmp_path / "runs")
    assert len(runs) == 1, runs  # the other rank wrote no run directory of its own
    run = runs[0]
    assert result.stdout.strip().splitlines()[-1] == str(run)
    assert result.stdout.count(run.name) == 2  # the table's title and the last line, once
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished"
    assert info["world_size"] == 2 and info["global_batch_size"] == 64
    assert "global batch 64 = batch_size 32 x 2 processes" in result.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy"]["value"] <= 1.0
    assert (run / "report.html").is_file() and (run / "checkpoints" / "best.pt").is_file()

    from mlflow.tracking import MlflowClient

    tracked = MlflowClient(f"sqlite:///{store}").get_run(info["mlflow_run_id"])
    assert tracked.info.status == "FINISHED"
    assert tracked.data.params["train.distributed.nproc"] == "2"
    history = MlflowClient(f"sqlite:///{store}").get_metric_history(tracked.info.run_id, "val/loss")
    assert len(history) == 3  # one point per epoch, logged once (by rank 0)


@pytest.mark.parametrize(
    ("per_rank", "accumulate"),
    [(32, 1), (16, 2)],
    ids=["batch", "accumulation"],
)
def test_two_processes_end_with_the_weights_of_one_process_with_the_global_batch(
    tmp_path: Path,
    table_csv: Callable[..., Path],
    write_config: Callable[..., Path],
    per_rank: int,
    accumulate: int,
) -> None:
    """2 ranks x ``per_rank`` x ``accumulate`` = 64: the same updates as one process with a
    batch of 64, on the same data order (the last, partial step included)."""
    import mlsmith

    config = write_config(table_csv("regression"), model={"hidden": [32, 16]})
    single = mlsmith.train(config, ["train.batch_size=64", "experiment=single"])
    result = _torchrun(
        "train",
        config,
        f"train.batch_size={per_rank}",
        f"train.grad_accum_steps={accumulate}",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [parallel] = _runs(tmp_path / "runs")
    assert json.loads((parallel / "run.json").read_text())["world_size"] == 2
    _assert_same_weights(_weights(single.path), _weights(parallel))
    history = [line.split(",")[:2] for line in (parallel / "history.csv").read_text().split()]
    assert history[-1] == ["3", "9"]  # 3 epochs of 3 steps: 168 training rows / 64


def test_two_nodes_each_with_its_own_torchrun_agent_train_one_run(
    tmp_path: Path, table_csv: Callable[..., Path], write_config: Callable[..., Path]
) -> None:
    """Multi-node as on a cluster: one torchrun agent per "node" (both on 127.0.0.1 here),
    meeting at a static rendezvous; node 0's rank writes the run."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(table_csv("binary"))
    agents = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={node}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                "-m",
                "mlsmith",
                "train",
                str(config),
                "--no-progress",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for node in (0, 1)
    ]
    outputs = [agent.communicate(timeout=200) for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], outputs[0][1][-3000:]
    [run] = _runs(tmp_path / "runs")
    assert outputs[0][0].strip().splitlines()[-1] == str(run)
    assert outputs[1][0].strip() == ""  # the other node's rank prints nothing
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["world_size"] == 2


def test_a_killed_job_resumes_from_its_last_checkpoint_on_another_world_size(
    tmp_path: Path, table_csv: Callable[..., Path], write_config: Callable[..., Path]
) -> None:
    """SIGTERM to the launcher stops both ranks cleanly (run interrupted, last.pt whole); the
    run then continues on one process, and says that the world changed."""
    config = write_config(
        table_csv("binary", rows=2000),
        train={"epochs": 40, "batch_size": 16, "checkpoint": {"every_n_steps": 5}},
        model={"hidden": [64, 64]},
    )
    command = [sys.executable, "-m", "mlsmith", "train", str(config)]
    command += ["train.distributed.nproc=2", "--no-progress"]
    launcher = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = _runs(tmp_path / "runs")
        if runs and (runs[0] / "checkpoints" / "last.pt").is_file():
            break
        time.sleep(0.2)
    else:
        launcher.kill()
        pytest.fail("no checkpoint appeared: " + launcher.communicate()[1][-2000:])
    time.sleep(1.0)
    launcher.send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=90)
    assert launcher.returncode != 0
    [run] = _runs(tmp_path / "runs")
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted", stderr[-3000:]
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert saved["world_size"] == 2 and len(saved["rng_by_rank"]) == 2
    stopped_at = saved["global_step"]
    assert 0 < stopped_at < 40 * 63  # killed mid-training

    result = _mlsmith("train", config, "--resume", run, "train.epochs=2", "--no-progress")
    # train.epochs=2 may already be spent: the run then just finishes from its checkpoint.
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["world_size"] == 1
    resumed = load_checkpoint(run / "checkpoints" / "last.pt")
    assert resumed["global_step"] >= stopped_at
    assert any("from a checkpoint written by 2" in note for note in info["observations"]), info[
        "observations"
    ]


def test_a_family_that_trains_on_one_process_is_refused_under_torchrun(
    tmp_path: Path, table_csv: Callable[..., Path], write_config: Callable[..., Path]
) -> None:
    config = write_config(table_csv("binary"))
    raw = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**raw, "model": {"type": "sklearn"}}))
    result = _torchrun("train", config, "--no-progress")
    assert result.returncode != 0
    assert "trains on one process" in result.stderr
    assert not _runs(tmp_path / "runs")


def test_distributed_settings_are_checked(tmp_path: Path) -> None:
    from mlsmith.config import load_config
    from mlsmith.errors import ConfigError

    data = {"path": "x.csv", "target": "y"}
    with pytest.raises(ConfigError, match="nproc"):
        load_config({"data": data}, ["train.distributed.nproc=0"])
    with pytest.raises(ConfigError, match="strategy"):
        load_config({"data": data}, ["train.distributed.strategy=horovod"])
    assert yaml.safe_load(load_config({"data": data}).to_yaml())["train"]["distributed"] == {
        "nproc": 1,
        "strategy": "ddp",
    }
