"""Data-parallel training on real processes: torchrun, gloo on the CPU, two ranks.

Every test here starts real worker processes (``torchrun`` or ``mlsmith train`` with
``train.distributed.nproc=2``) and reads what they wrote: the run directory, run.json, MLflow,
the checkpoints' weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from tests.conftest import CliResult

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


def _runs(output: Path, experiment: str = "t") -> list[Path]:
    return sorted(p for p in output.glob(f"{experiment}/*") if (p / "config.yaml").is_file())


def _weights(run: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / name)["model"]  # type: ignore[no-any-return]


def _assert_same_weights(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6
) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=atol), (
            key,
            (a[key] - b[key]).abs().max(),
        )


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """The reference of the equivalence tests, trained once: a config on a multiclass table
    and the weights one process ends with at batch 64."""
    from tests.conftest import config_dict, make_table

    import mlsmith

    root = tmp_path_factory.mktemp("one_process")
    make_table("multiclass", 240).to_csv(root / "multiclass.csv", index=False)
    sections: dict[str, Any] = {"model": {"type": "mlp", "hidden": [32, 16], "dropout": 0.0}}
    config = root / "config.yaml"
    config.write_text(
        yaml.safe_dump(config_dict(root / "multiclass.csv", root / "runs", **sections))
    )
    single = mlsmith.train(config, ["train.batch_size=64", "experiment=single"], progress=False)
    return config, _weights(single.path)


def _assert_the_global_batch(run: Path, expected: dict[str, torch.Tensor]) -> None:
    """The run (2 ranks x batch x accumulation = 64) ended with the weights one process ends
    with at batch 64, on the same data order (the last, partial step included)."""
    _assert_same_weights(expected, _weights(run))
    history = [line.split(",")[:2] for line in (run / "history.csv").read_text().split()]
    assert history[-1] == ["3", "9"]  # 3 epochs of 3 steps: 168 training rows / 64


# Each strategy's job also checks the weights against one process with the global batch, one
# without and one with gradient accumulation (the CNN tests below check both strategies
# without it, DDP's two-node job with it; tests/training/test_distributed_dropout.py all four).
@pytest.mark.parametrize(
    ("strategy", "per_rank", "accumulate"),
    [("ddp", 32, 1), ("fsdp", 16, 2)],
    ids=["ddp", "fsdp"],
)
def test_two_processes_train_track_and_report_one_run(
    tmp_path: Path,
    one_process: tuple[Path, dict[str, torch.Tensor]],
    strategy: str,
    per_rank: int,
    accumulate: int,
) -> None:
    """``train.distributed.nproc=2``: mlsmith starts torchrun itself; rank 0 writes one run,
    tracked in MLflow with its report, and run.json states the world and the global batch.
    2 ranks x ``per_rank`` x ``accumulate`` = 64 end with the weights of one process with a
    batch of 64, on the same data order (the last, partial step included)."""
    import mlsmith

    config, expected = one_process
    store = tmp_path / "mlflow.db"
    result = _mlsmith(
        "train",
        config,
        "train.distributed.nproc=2",
        f"train.distributed.strategy={strategy}",
        f"train.batch_size={per_rank}",
        f"train.grad_accum_steps={accumulate}",
        "track.enabled=true",
        f"track.uri=sqlite:///{store}",
        "eval.report=true",
        f"output_dir={tmp_path / 'runs'}",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = _runs(tmp_path / "runs")
    assert len(runs) == 1, runs  # the other rank wrote no run directory of its own
    run = runs[0]
    assert result.stdout.strip().splitlines()[-1] == str(run)
    assert result.stdout.count(run.name) == 2  # the table's title and the last line, once
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished"
    assert info["world_size"] == 2 and info["global_batch_size"] == 64
    assert (
        f"global batch 64 = batch_size {per_rank} x 2 processes x grad_accum_steps {accumulate}"
        in result.stderr
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy"]["value"] <= 1.0
    assert (run / "report.html").is_file() and (run / "checkpoints" / "best.pt").is_file()

    from mlflow.tracking import MlflowClient

    tracked = MlflowClient(f"sqlite:///{store}").get_run(info["mlflow_run_id"])
    assert tracked.info.status == "FINISHED"
    assert tracked.data.params["train.distributed.nproc"] == "2"
    history = MlflowClient(f"sqlite:///{store}").get_metric_history(tracked.info.run_id, "val/loss")
    assert len(history) == 3  # one point per epoch, logged once (by rank 0)
    last = load_checkpoint(run / "checkpoints" / "last.pt")  # weights_only=True
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert last["model"].keys() == best["model"].keys()
    assert all(type(v) is torch.Tensor for v in best["model"].values())  # whole, not shards
    shards = sorted(p.name for p in (run / "checkpoints").glob("last.dcp.*"))
    if strategy == "fsdp":  # the optimizer's shards: one directory, the one last.pt names
        assert shards == [last["sharded"]] and "optimizer" not in last
        assert (run / "checkpoints" / last["sharded"] / ".metadata").is_file()
    else:
        assert shards == [] and "optimizer" in last
    _assert_the_global_batch(run, expected)
    # The run's model predicts on one process (this one), without torchrun.
    data = config.parent / "multiclass.csv"
    assert mlsmith.predict(run, data, tmp_path / "p.csv") == 240


@pytest.fixture(scope="module")
def cnn_one_process(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, torch.Tensor]]:
    """The CNN with batch norm on generated images, trained once by one process at batch 32."""
    from tests.image_data import image_config, make_images, write_folder

    import mlsmith

    root = tmp_path_factory.mktemp("cnn")
    images, labels = make_images(30, classes=3, size=(16, 16), channels=3)
    folder = write_folder(root / "shapes", images, labels, names=["a", "b", "c"])
    config = image_config(folder, root / "runs")
    config["model"] = {"type": "cnn", "channels": [8, 16], "depth": 1, "dropout": 0.0}
    config["train"] = {"epochs": 2, "batch_size": 16, "optimizer": {"lr": 0.01}}
    # No report: seconds of plots for each of the three runs, and tested above.
    config["eval"] = {"bootstrap": 0, "baseline": False, "report": False}
    path = root / "cnn.yaml"
    path.write_text(yaml.safe_dump(config))
    single = mlsmith.train(path, ["train.batch_size=32", "experiment=single"], progress=False)
    return path, _weights(single.path)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_the_cnn_with_batch_norm_matches_one_process_with_the_global_batch(
    cnn_one_process: tuple[Path, dict[str, torch.Tensor]], strategy: str
) -> None:
    """Batch norm normalises with the statistics of the global batch (synchronised over the
    ranks, on the CPU too): 2 x 16 images end with the weights and running statistics of
    1 x 32."""
    path, expected = cnn_one_process
    result = _torchrun(
        "train",
        path,
        f"train.distributed.strategy={strategy}",
        f"experiment={strategy}",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [parallel] = _runs(path.parent / "runs", strategy)
    weights = _weights(parallel)
    assert any("running_var" in key for key in weights)  # the statistics are compared too
    _assert_same_weights(expected, weights)


def test_two_nodes_each_with_its_own_torchrun_agent_train_one_run(
    tmp_path: Path, one_process: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    """Multi-node as on a cluster: one torchrun agent per "node" (both on 127.0.0.1 here),
    meeting at a static rendezvous; node 0's rank writes the run. Its job is also DDP's
    accumulation case of the global batch: 2 ranks x 16 x 2 micro-batches end with the weights
    of one process with the global batch of 64."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config, expected = one_process
    settings = ["train.batch_size=16", "train.grad_accum_steps=2", "train.distributed.strategy=ddp"]
    settings += [f"output_dir={tmp_path / 'runs'}", "train.preflight=false"]
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
                *settings,
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
    _assert_the_global_batch(run, expected)


# Resumed in this process, which has no process group: DCP says so as it reads FSDP's shards.
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_killed_job_resumes_from_its_last_checkpoint_on_another_world_size(
    tmp_path: Path,
    table_csv: Callable[..., Path],
    write_config: Callable[..., Path],
    strategy: str,
) -> None:
    """SIGTERM to the launcher stops both ranks cleanly (run interrupted, last.pt whole); the
    run then continues on one process, and says that the world changed (under FSDP the
    optimizer's shards are read back for one process)."""
    import mlsmith

    config = write_config(
        table_csv("binary", rows=2000),
        train={
            "epochs": 40,
            "batch_size": 16,
            "checkpoint": {"every_n_steps": 5},
            "preflight": False,
        },
        model={"hidden": [64, 64]},
        eval={"bootstrap": 0},
    )
    command = [sys.executable, "-m", "mlsmith", "train", str(config)]
    command += ["train.distributed.nproc=2", f"train.distributed.strategy={strategy}"]
    command += ["--no-progress"]
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
    assert ("sharded" in saved) == (strategy == "fsdp")

    # On one process: this one (train.epochs=2 may already be spent: the run then just
    # finishes from its checkpoint).
    mlsmith.train(config, ["train.epochs=2"], resume=run, progress=False)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["world_size"] == 1
    resumed = load_checkpoint(run / "checkpoints" / "last.pt")
    assert resumed["global_step"] >= stopped_at
    assert any("from a checkpoint written by 2" in note for note in info["observations"]), info[
        "observations"
    ]


def _marked(marker: str, *variables: str) -> list[int]:
    """The live processes whose environment holds ``marker`` and ``variables``: a job's
    launcher, torchrun agent and workers (each worker in a session of its own)."""
    wanted = [marker.encode(), *(v.encode() for v in variables)]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")  # empty for a zombie
        except OSError:
            continue
        if all(variable in environ for variable in wanted):
            found.append(int(entry.name))
    return found


def _worker_pid(marker: str, rank: int) -> int | None:
    """The pid of the torchrun worker of ``rank`` whose environment holds ``marker``."""
    found = _marked(marker, f"RANK={rank}", "TORCHELASTIC_RESTART_COUNT=0")
    return found[0] if found else None


def _kill_job(job: subprocess.Popen[Any], marker: str) -> None:
    """SIGKILL the job and every process it started, as a lost machine takes them all.

    torchrun starts each worker in a session of its own: killing the job's process group
    alone leaves the workers training (and writing the run) without their agent.
    """
    for pid in [job.pid, *_marked(marker)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    job.wait()
    deadline = time.monotonic() + 30
    while _marked(marker):
        assert time.monotonic() < deadline, "the job's workers outlived SIGKILL"
        time.sleep(0.01)


def _marker() -> tuple[str, dict[str, str]]:
    """A variable only one job's processes hold, and the environment that gives it to them."""
    name, value = "MLSMITH_TEST_JOB", f"{os.getpid()}-{time.monotonic_ns()}"
    return f"{name}={value}", {**_env(), name: value}


# FSDP's path (weights and optimizer from DCP shards) is the longer one; DDP's differs only in
# reading them from last.pt (it passed too, at atol 0: 76 s more, so not run every time).
@pytest.mark.parametrize("strategy", ["fsdp"])
def test_a_job_killed_mid_epoch_resumes_exactly_on_the_same_world(
    tmp_path: Path,
    table_csv: Callable[..., Path],
    write_config: Callable[..., Path],
    strategy: str,
) -> None:
    """Both ranks SIGKILLed inside an epoch (a lost machine: no handler runs), then resumed on
    two processes: the weights, the history and the test metrics are those of a run never
    interrupted (each rank's dropout stream, the optimizer's shards, the schedule)."""
    epochs = 3  # of 14 steps (420 training rows / 32), a checkpoint every 4
    sections: dict[str, Any] = {
        "train": {
            "epochs": epochs,
            "batch_size": 16,
            "checkpoint": {"every_n_steps": 4},
            "scheduler": {"name": "cosine", "warmup_epochs": 1},
            "distributed": {"nproc": 2, "strategy": strategy},
            "preflight": False,
        },
        "model": {"hidden": [32, 32], "dropout": 0.2},
        "eval": {"bootstrap": 0},
    }
    data = table_csv("regression", rows=600)
    # Every job under torchrun itself (mlsmith's own launcher is tested above).
    reference = write_config(data, "reference.yaml", experiment="reference", **sections)
    done = _torchrun("train", reference, "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    [expected] = _runs(tmp_path / "runs", "reference")

    config = write_config(data, "killed.yaml", experiment="killed", **sections)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node=2", "-m", "mlsmith", "train", str(config), "--no-progress"]
    marker, env = _marker()
    with (tmp_path / "killed.log").open("w") as log:
        job = subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while True:
            assert job.poll() is None, "training ended before the kill"
            assert time.monotonic() < deadline, "no checkpoint to kill at"
            found = list((tmp_path / "runs" / "killed").glob("*/checkpoints/last.pt"))
            if found:
                loop = torch.load(found[0], weights_only=True)["loop"]
                if loop["epoch"] >= 1 and loop["step_in_epoch"] > 0:
                    break
            time.sleep(0.002)
    finally:
        _kill_job(job, marker)  # the agent and both workers, with no handler run
    [run] = _runs(tmp_path / "runs", "killed")
    killed = load_checkpoint(run / "checkpoints" / "last.pt")
    assert killed["loop"]["step_in_epoch"] > 0 and killed["loop"]["epoch"] < epochs
    assert json.loads((run / "run.json").read_text())["status"] != "finished"

    result = _torchrun("train", config, "--resume", run, "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("last.pt", "best.pt"):
        _assert_same_weights(_weights(expected, name), _weights(run, name), atol=0.0)
    assert (run / "history.csv").read_text().split()[-1].split(",")[:3] == (
        (expected / "history.csv").read_text().split()[-1].split(",")[:3]
    )
    metrics = [json.loads((r / "metrics.json").read_text())["test"] for r in (expected, run)]
    assert metrics[0] == metrics[1]


def test_one_rank_killed_under_max_restarts_continues_the_same_run(
    tmp_path: Path, table_csv: Callable[..., Path], write_config: Callable[..., Path]
) -> None:
    """``torchrun --max-restarts 1``: SIGKILL one worker mid-training; torchrun restarts both,
    and they continue the run the job started from its last checkpoint (one run directory,
    finished, every epoch trained) instead of starting another."""
    config = write_config(
        table_csv("binary", rows=1500),
        train={
            "epochs": 6,
            "batch_size": 16,
            "checkpoint": {"every_n_steps": 5},
            "preflight": False,
        },
        model={"hidden": [32, 32]},
        eval={"bootstrap": 0},
    )
    marker, env = _marker()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node=2", "--max-restarts=1", "-m", "mlsmith", "train", str(config)]
    command += ["--no-progress"]
    with (tmp_path / "job.log").open("w") as log:
        job = subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "runs" / "t").glob("*/checkpoints/last.pt")):
            assert job.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        victim = _worker_pid(marker, rank=1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        assert job.wait(timeout=180) == 0, (tmp_path / "job.log").read_text()[-3000:]
    finally:
        if job.poll() is None:
            _kill_job(job, marker)
    output = (tmp_path / "job.log").read_text()
    assert "torchrun restarted the workers (restart 1): continuing" in output
    [run] = _runs(tmp_path / "runs")
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["world_size"] == 2
    history = (run / "history.csv").read_text().split()
    assert [row.split(",")[0] for row in history[1:]] == ["1", "2", "3", "4", "5", "6"]


def test_check_under_torchrun_runs_once_on_rank_0(
    tmp_path: Path, table_csv: Callable[..., Path], write_config: Callable[..., Path]
) -> None:
    """``torchrun ... mlsmith check``: one report (rank 0's), costed for the two processes."""
    config = write_config(table_csv("binary"))
    result = _torchrun("check", config, "--quick", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)  # exactly one JSON document: the other rank is silent
    cost = next(r for r in report["results"] if r["group"] == "cost")
    assert "2 processes, each assumed as fast as this one" in cost["detail"]


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


@pytest.mark.parametrize(
    ("setting", "message"),
    [("train.ema=0.99", "train.ema"), ("train.precision=16-mixed", "use bf16-mixed")],
)
def test_what_fsdp_cannot_shard_is_refused_before_any_process_starts(
    tmp_path: Path,
    table_csv: Callable[..., Path],
    write_config: Callable[..., Path],
    cli: Callable[..., CliResult],
    setting: str,
    message: str,
) -> None:
    config = write_config(table_csv("binary"))
    fsdp = ["train.distributed.nproc=2", "train.distributed.strategy=fsdp"]
    result = cli("train", config, *fsdp, setting)  # in this process: nothing may launch
    assert result.code == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not _runs(tmp_path / "runs")


def test_distributed_settings_are_checked(tmp_path: Path) -> None:
    from mlsmith.config import load_config
    from mlsmith.errors import ConfigError

    data = {"path": "x.csv", "target": "y"}
    with pytest.raises(ConfigError, match="nproc"):
        load_config({"data": data}, ["train.distributed.nproc=0"])
    with pytest.raises(ConfigError, match="strategy"):
        load_config({"data": data}, ["train.distributed.strategy=horovod"])
    assert (
        load_config({"data": data}, ["train.distributed.strategy=fsdp"]).train.distributed.strategy
        == "fsdp"
    )
    assert yaml.safe_load(load_config({"data": data}).to_yaml())["train"]["distributed"] == {
        "nproc": 1,
        "strategy": "ddp",
    }
