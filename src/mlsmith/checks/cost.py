"""The rough cost of the run: a few timed training steps, extrapolated to every epoch.

One warm-up step (first-call allocations, lazy initialisation), then ``TIMED_STEPS`` steps timed
on the configured device and precision, data loading and augmentation included, the GPU
synchronised before the clock stops. The estimate covers training steps only, not validation,
and is an upper bound when early stopping is on.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from mlsmith.checks import CheckResult
from mlsmith.config import TrainConfig
from mlsmith.tasks import Task

TIMED_STEPS = 3


def training_cost(
    network: torch.nn.Module,
    batches: Any,
    task: Task,
    cfg: TrainConfig,
    device: torch.device,
    *,
    n_train: int,
) -> CheckResult:
    """Time a few training steps (after one warm-up) and extrapolate to the whole run."""
    from mlsmith.training.optimizers import build_optimizer
    from mlsmith.training.precision import build_precision
    from mlsmith.training.step import optimizer_step

    # fp16 needs CUDA; the trainer falls back to bf16 (and warns about it itself).
    fp16_off_cuda = cfg.precision == "16-mixed" and device.type != "cuda"
    precision_name = "bf16-mixed" if fp16_off_cuda else cfg.precision
    precision = build_precision(precision_name, device)
    opt = build_optimizer(network, cfg.optimizer)
    network.train()
    times: list[float] = []
    iterator = iter(batches)
    while len(times) < 1 + TIMED_STEPS:
        started = time.perf_counter()
        try:
            inputs, target = next(iterator)
        except StopIteration:  # fewer batches than timed steps: go round again
            iterator = iter(batches)
            continue
        inputs = {k: v.to(device) for k, v in inputs.items()}
        batch = [(inputs, target.to(device))]
        measure = cfg.log_grad_norm or cfg.grad_clip is not None  # as the trainer steps
        optimizer_step(
            batch,
            forward=network,
            loss_fn=task.loss,
            optimizer=opt,
            precision=precision,
            clip=cfg.grad_clip,
            measure=measure,
        )
        if device.type == "cuda":
            torch.cuda.synchronize()  # honest timing: wait for the queued kernels
        times.append(time.perf_counter() - started)
    per_micro = float(np.median(times[1:]))
    per_step = per_micro * cfg.grad_accum_steps
    # Several processes: each step's global batch is shared, so an epoch has 1/W the steps.
    world = world_size(cfg)
    per_optimizer_step = cfg.batch_size * cfg.grad_accum_steps * world
    steps = n_train // per_optimizer_step if cfg.drop_last else -(-n_train // per_optimizer_step)
    total = per_step * steps * cfg.epochs
    notes = [f"on {device.type}"]
    if world > 1:
        notes.append(
            f"{world} processes, each assumed as fast as this one; gradient averaging not timed"
        )
    if cfg.compile:
        notes.append("without torch.compile")
    detail = (
        f"{_duration(per_step)}/step x {steps:,} steps/epoch x {cfg.epochs} epochs ≈ "
        f"{_duration(total)} of training ({', '.join(notes)}; an upper bound: early stopping "
        "may end sooner)"
    )
    return CheckResult("cost", "training cost", "pass", detail)


def world_size(cfg: TrainConfig) -> int:
    """The processes the run trains on: torchrun's under torchrun, else train.distributed.nproc."""
    import os

    from mlsmith.training import distributed

    return int(os.environ["WORLD_SIZE"]) if distributed.launched() else cfg.distributed.nproc


# --- helpers ----------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    if seconds < 1.0:
        return f"{seconds * 1000:.3g} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"
