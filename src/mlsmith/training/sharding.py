"""Fully sharded data parallel training (FSDP2, ``train.distributed.strategy: fsdp``).

With DDP every rank holds the whole model, its gradients and its optimizer state. FSDP shards
all three over the ranks: each holds 1/W of every parameter (a ``DTensor``), gathers a layer's
full weights just before the layer runs and frees them after, and reduce-scatters the
gradients so each rank updates only its own shard. The maths is DDP's (gradients averaged over
the global batch), so the training loop is the same; what changes is here:

- :func:`shard`: ``fully_shard`` on every module that owns parameters, then on the root, with
  ``train.precision`` mapped onto FSDP's mixed-precision policy;
- :func:`full_model_state`: the whole model gathered on rank 0, so ``best.pt`` and ``last.pt``
  stay ordinary consolidated weights that ``evaluate``, ``predict`` and ``export`` load on one
  process with ``weights_only=True``;
- :func:`save_sharded` / :func:`load_sharded`: the model and optimizer shards of ``last.pt``
  written by every rank with ``torch.distributed.checkpoint`` (DCP) and read back on any
  number of processes (DCP reshards on load);
- :func:`norms`: per-parameter gradient norms over the shards, for logging and clipping.

DCP keeps its metadata as a pickle, so :func:`load_sharded` reads only a directory inside the
run's own ``checkpoints/`` folder, named by the ``last.pt`` that rank 0 wrote.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mlsmith.errors import RunError

# last.pt names the sharded directory it belongs to: "last.dcp.<global step>".
SHARDED_PREFIX = "last.dcp."
_SHARDED_NAME = re.compile(r"last\.dcp\.\d+")


def shard(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Shard ``model`` in place over the process group; returns it (now an ``FSDPModule``).

    Each module that owns parameters directly becomes one unit (its weights are gathered
    only while it runs), then the root takes whatever is left. A ``MultiheadAttention``
    reads its ``out_proj`` weights without calling that layer, so the two stay one unit.
    ``precision``: ``bf16-mixed`` computes in bf16 and reduces gradients in fp32 (FSDP casts
    the gathered weights, so no autocast is needed); ``32`` is full precision.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (
        MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32, output_dtype=torch.float32
        )
        if precision == "bf16-mixed"
        else MixedPrecisionPolicy()
    )
    inside_attention = {
        id(child)
        for module in model.modules()
        if isinstance(module, torch.nn.MultiheadAttention)
        for child in module.modules()
        if child is not module
    }
    units = [
        module
        for module in model.modules()
        if module is not model
        and id(module) not in inside_attention
        and any(True for _ in module.parameters(recurse=False))
    ]
    for unit in reversed(units):  # innermost first: a unit takes the parameters left to it
        fully_shard(unit, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def full_model_state(model: torch.nn.Module) -> dict[str, Any]:
    """The whole state dict of a sharded ``model`` on the CPU of rank 0 (empty on the others).

    Every rank must call it: it gathers the shards.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def norms(params: list[torch.nn.Parameter]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-parameter gradient L2 norms (P,) over every rank's shard, and their total.

    One all-reduce of P squared norms: the shards are disjoint, so their squares add up to the
    whole gradient's. A parameter without a gradient counts 0.
    """
    from torch.distributed.tensor import DTensor

    local = [
        torch.linalg.vector_norm(p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad)
        if p.grad is not None
        else torch.zeros((), device=p.device)
        for p in params
    ]
    if not local:
        return torch.zeros(0), torch.zeros(())
    squares = torch.stack(local).float().square()
    torch.distributed.all_reduce(squares)
    per_parameter = squares.sqrt()
    return per_parameter, torch.linalg.vector_norm(per_parameter)


def local_tensors(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """This rank's shard of each tensor (the tensor itself when it is not sharded)."""
    from torch.distributed.tensor import DTensor

    return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


def save_sharded(
    directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int
) -> str:
    """Write this rank's model and optimizer shards under ``directory``; returns the name of
    the sharded checkpoint (``last.dcp.<step>``) that ``last.pt`` records.

    Every rank calls it. The directory is new for each step, so the previous one stays whole
    until the ``last.pt`` naming the new one has been written (:func:`prune_sharded`).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    name = f"{SHARDED_PREFIX}{step}"
    target = directory / name
    directory.mkdir(parents=True, exist_ok=True)
    if target.exists() and torch.distributed.get_rank() == 0:
        shutil.rmtree(target)  # a leftover of an interrupted write at this very step
    torch.distributed.barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=target)
    return name


def load_sharded(
    directory: Path, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Load the model and optimizer shards that ``last.pt`` names into ``model`` and
    ``optimizer``, resharded for this world (one process and an unsharded model included).

    ``name`` must be a ``last.dcp.<step>`` directory in ``directory``: DCP's metadata is a
    pickle, so nothing outside the run's own checkpoints is ever read.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    target = directory / name
    if not _SHARDED_NAME.fullmatch(name) or not (target / ".metadata").is_file():
        raise RunError(
            f"{directory / 'last.pt'}: names the sharded checkpoint '{name}', which is not a "
            f"complete last.dcp.<step> directory in {directory}; restore the checkpoints "
            "folder from a copy or train again"
        )
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=target)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
    )


def prune_sharded(directory: Path, keep: str) -> None:
    """Delete every sharded checkpoint in ``directory`` but ``keep`` (rank 0, after last.pt)."""
    for old in directory.glob(f"{SHARDED_PREFIX}*"):
        if old.name != keep and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def no_sync(model: torch.nn.Module) -> Iterator[None]:
    """Accumulate gradients locally (no reduce-scatter) for the micro-batches inside."""
    from torch.distributed.fsdp import FSDPModule

    assert isinstance(model, FSDPModule)
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
