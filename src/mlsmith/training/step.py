"""One optimizer step: the few lines every gradient-descent loop in mlsmith shares.

The Trainer, the LR finder, the cost estimate and the one-batch overfitting check all step
through :func:`optimizer_step`, so mixed precision, gradient accumulation, clipping and the
gradient-norm measurement behave the same everywhere, and a fix in one place fixes them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from mlsmith.training.diagnostics import gradient_norms_and_total
from mlsmith.training.flat import FlatBuffers
from mlsmith.training.precision import Precision

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Called after the gradients are measured and before the weights change: (the step's mean loss,
# the total gradient norm before clipping, the per-parameter norms). Raising stops the update.
BeforeUpdate = Callable[[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"], Any]


@dataclass(slots=True)
class StepResult:
    """What one step did: its mean loss and gradient norms stay on the device (never waited for)."""

    loss: torch.Tensor  # () mean loss over the step's samples, detached
    samples: int
    grad_norm: torch.Tensor | None  # () total norm before clipping, when measured
    # (P,) per-parameter norms before clipping, when measured (not on the flat-gradient path,
    # where only the total is taken: a diagnosis reads the gradients themselves)
    grad_norms: torch.Tensor | None


def optimizer_step(
    micro_batches: Sequence[Batch],
    *,
    forward: Callable[..., torch.Tensor],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    params: list[torch.nn.Parameter] | None = None,
    clip: float | None = None,
    measure: bool = False,
    before_update: BeforeUpdate | None = None,
    flat: FlatBuffers | None = None,
    step_samples: int | None = None,
    replicas: int = 1,
    no_sync: Callable[[], AbstractContextManager[Any]] | None = None,
    norms: Callable[[list[torch.nn.Parameter]], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> StepResult:
    """Forward and backward over ``micro_batches`` (accumulated), then one update.

    Each micro-batch's mean loss is weighted by its share of the step's samples, so
    accumulating A batches of B is the same update as one batch of A*B, a partial last batch
    included; without accumulation the share is 1 and the maths is exactly a plain loop's.
    With ``measure`` or ``clip`` the true (unscaled) gradient norms of ``params`` are taken
    before clipping; ``clip`` caps their total as ``torch.nn.utils.clip_grad_norm_`` does.
    ``flat``: the parameters' flat buffers, if any (see :mod:`.flat`).

    Data-parallel training (``replicas`` processes, each ``forward`` a DDP module averaging
    the gradients over them): ``step_samples`` is the step's sample count over every process, so a
    micro-batch weighs ``len * replicas / total`` and the averaged gradient is the mean over
    the whole global batch even when the last step's shares differ; ``no_sync`` (DDP's) keeps
    every micro-batch but the last from averaging, one all-reduce per step. ``norms``: how to
    take the per-parameter gradient norms and their total when the gradients are sharded
    (FSDP's, see :func:`mlsmith.training.sharding.norms`).
    """
    n_step = sum(len(target) for _, target in micro_batches)
    everyone = step_samples or n_step
    if len(micro_batches) == 1 and n_step * replicas == everyone:
        # No accumulation and an equal share: exactly a plain loop's step.
        inputs, target = micro_batches[0]
        with precision.autocast():
            loss = loss_fn(forward(**inputs), target)
        precision.backward(loss)
        step_loss = loss.detach()
    else:
        step_loss = torch.zeros((), device=micro_batches[0][1].device)
        last = len(micro_batches) - 1
        for i, (inputs, target) in enumerate(micro_batches):
            with no_sync() if no_sync is not None and i < last else nullcontext():
                with precision.autocast():
                    loss = loss_fn(forward(**inputs), target)
                precision.backward(loss * (len(target) * replicas / everyone))
            step_loss.add_(loss.detach(), alpha=len(target) / n_step)
    per_parameter = total = None
    if flat is not None:
        flat.before_update()
    if measure or clip is not None:
        params = params if params is not None else _trainable(optimizer)
        precision.unscale(optimizer)
        # Clipping takes torch's total (a norm of per-parameter norms) so it matches
        # clip_grad_norm_ to the bit; a measurement alone takes the one-reduction total.
        total = flat.total_norm() if flat is not None and clip is None else None
        if total is None:
            per_parameter, total = (norms or gradient_norms_and_total)(params)
        if clip is not None:
            torch.nn.utils.clip_grads_with_norm_(params, clip, total)
    if before_update is not None:
        before_update(step_loss, total, per_parameter)
    precision.step(optimizer)
    if flat is not None:
        flat.zero_()
    else:
        optimizer.zero_grad(set_to_none=True)
    return StepResult(step_loss, n_step, total, per_parameter)


def _trainable(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
