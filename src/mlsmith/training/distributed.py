"""Training on several processes with PyTorch's own runtime: ``torchrun`` starts them, this
module joins them into one process group and says who is who.

mlsmith never spawns or schedules workers itself. ``torchrun`` (or any launcher that sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) starts one
process per device, on one node or many; :func:`process_group` joins them (gloo on the CPU,
NCCL on CUDA). :func:`current` then answers "which rank am I, out of how many" anywhere, with
one process as the world of size 1, so single-process code needs no special case.

What every rank does the same way: read the data, seed, build the model, draw each epoch's
permutation. What differs: each rank takes its own share of every optimizer step
(:meth:`mlsmith.data.batches.TensorBatches.shard`), DDP averages the gradients, and rank 0 alone
writes anything (run directory, checkpoints, MLflow, reports, the progress display).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

if TYPE_CHECKING:
    from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)

T = TypeVar("T")

# Set by torchrun in every worker it starts; mlsmith's own launcher checks it so that a worker
# never launches torchrun again.
LAUNCHED_BY = "TORCHELASTIC_RUN_ID"


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (a world of one without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes: the run directory, checkpoints, tracking, logs."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there is more than one process to coordinate with."""
        return self.size > 1


def current() -> World:
    """The world of the process group this process has joined (size 1 when none)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return World(
            torch.distributed.get_rank(),
            torch.distributed.get_world_size(),
            int(os.environ.get("LOCAL_RANK", "0")),
        )
    return World()


def launched() -> bool:
    """Whether a launcher started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def restarts() -> int:
    """How many times torchrun has restarted this job's workers after a failure
    (``--max-restarts``); 0 on the first attempt and without torchrun."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def job_id() -> str | None:
    """torchrun's id for this job, the same on every node and across restarts (None without)."""
    return os.environ.get(LAUNCHED_BY)


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 without one), group joined or not."""
    return int(os.environ.get("RANK", "0"))


@contextmanager
def process_group(device: str) -> Iterator[World]:
    """Join the launcher's process group for the duration of a run (no-op for one process).

    ``device``: the configured training device; CUDA takes NCCL and the GPU of
    ``LOCAL_RANK``, anything else gloo.
    """
    if not launched() or torch.distributed.is_initialized():
        yield current()
        return
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if cuda else "gloo"
    if restarts():
        # A restarted attempt meets in the same store as the failed one, where the dead
        # workers' addresses are still written: its own key prefix keeps it from them.
        rank, size = launched_rank(), int(os.environ["WORLD_SIZE"])
        store = torch.distributed.PrefixStore(f"mlsmith/attempt-{restarts()}", _launcher_store())
        torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=size)
    else:
        torch.distributed.init_process_group(backend)
    world = current()
    if not world.main:
        # Other ranks are quiet: warnings and errors only, and no progress display.
        logging.getLogger("mlsmith").setLevel(logging.WARNING)
    try:
        yield world
    finally:
        torch.distributed.destroy_process_group()


def _launcher_store() -> torch.distributed.Store:
    """A client of the store the launcher's environment points at (``MASTER_ADDR``/``PORT``):
    torchrun's own when it shares it with its workers, else one rank 0 serves, as
    ``init_process_group`` would open it."""
    from datetime import timedelta

    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    return torch.distributed.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        int(os.environ["WORLD_SIZE"]),
        is_master=not shared and launched_rank() == 0,
        timeout=timedelta(minutes=10),
        multi_tenant=True,
    )


def broadcast(value: T, world: World | None = None) -> T:
    """Rank 0's ``value`` on every rank (any picklable object; the value itself for one)."""
    world = world or current()
    if not world.active:
        return value
    box: list[Any] = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather_rows(rows: np.ndarray, world: World | None = None) -> np.ndarray:
    """Every rank's ``rows`` concatenated in rank order, on every rank."""
    world = world or current()
    if not world.active:
        return rows
    parts: list[Any] = [None] * world.size
    torch.distributed.all_gather_object(parts, rows)
    # A rank with no rows has no output width either (a (0, 1) placeholder): leave it out.
    filled = [part for part in parts if len(part)]
    return np.concatenate(filled) if filled else rows


def gather_objects(value: T, world: World | None = None) -> list[T]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    world = world or current()
    if not world.active:
        return [value]
    parts: list[Any] = [None] * world.size
    torch.distributed.all_gather_object(parts, value)
    return parts


def all_sum(values: Sequence[float], world: World | None = None) -> list[float]:
    """The sum over ranks of each of ``values`` (float64, on the CPU)."""
    world = world or current()
    if not world.active:
        return [float(v) for v in values]
    total = torch.tensor(list(values), dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        total = total.cuda()
    torch.distributed.all_reduce(total)
    return [float(v) for v in total.cpu()]


def barrier(world: World | None = None) -> None:
    """Wait until every rank gets here."""
    world = world or current()
    if world.active:
        torch.distributed.barrier()


def sync_batch_norm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` with its batch norm layers synchronised over the ranks, so their statistics
    are those of the global batch, as one process would compute them.

    CUDA takes PyTorch's SyncBatchNorm; the CPU (gloo) mlsmith's own, since PyTorch's runs on
    GPUs only. Layers are replaced inside ``model``; a model without batch norm is unchanged.
    """
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    from mlsmith.training.sync_batchnorm import convert_sync_batchnorm

    return convert_sync_batchnorm(model)


def replicate(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """``model`` wrapped in DistributedDataParallel: rank 0's weights copied to every rank, the
    gradients averaged over them in each backward pass (batch norm synchronised, see
    :func:`sync_batch_norm`).
    """
    from torch.nn.parallel import DistributedDataParallel

    model = sync_batch_norm(model, device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DistributedDataParallel(model, device_ids=[index])
    return DistributedDataParallel(model)


def launch(nproc: int, argv: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Run ``python -m mlsmith ARGV`` under torchrun with ``nproc`` processes on this node.

    ``env``: added to the workers' environment. Returns torchrun's exit code (0, or a
    worker's failure).
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "mlsmith",
        *argv,
    ]
    log.info("launching %d processes: %s", nproc, " ".join(command))
    # One thread per process unless asked: N processes on N cores must not each start N.
    extra = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})}
    process = subprocess.Popen(command, env={**os.environ, **extra})
    try:
        return process.wait()
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM): torchrun passes the signal to its workers, which
        # record the run as interrupted and checkpointed; wait for them rather than orphan them.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
