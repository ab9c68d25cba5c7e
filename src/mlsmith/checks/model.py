"""Model checks on a real training batch, always on a deep copy of the network.

What an engineer does before a long run (Karpathy's "Recipe for Training Neural Networks"): count
the parameters, push one batch forward and backward, compare the first loss with what an
untrained model should score, see that every trainable tensor gets a gradient, overfit one small
batch, and time a few steps to know what the run will cost.

Expected initial losses: a classifier whose logits start near zero predicts every class equally,
so its cross-entropy is ln(C) whatever the labels (binary: one logit, BCE = ln 2). Regression
targets are standardised on train, so predicting ~0 scores the batch's mean squared target (~1);
untrained outputs with a wide spread add their variance on top, which is what the check is for.
With class weights, focal loss or label smoothing the reference is the configured loss of uniform
predictions on the batch instead of ln(C). Outside 0.5x-1.5x of the expected value it warns.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mlsmith.checks import CheckResult
from mlsmith.checks.cost import TIMED_STEPS, training_cost
from mlsmith.config import Config, OptimizerConfig
from mlsmith.tasks import ClassificationTask, Task

if TYPE_CHECKING:
    from mlsmith.data.base import PreparedData
    from mlsmith.models.base import Model

Inputs = dict[str, torch.Tensor]

LOSS_BAND = (0.5, 1.5)
OVERFIT_ROWS = 32
# Small nets at a plain lr (1e-3) need several hundred steps to memorise 32 rows.
OVERFIT_STEPS = 1000
OVERFIT_SECONDS = 10.0
OVERFIT_DROP = 0.9
OVERFIT_CAUSES = (
    "likely causes: learning rate too low (or too high: the loss jumps), too much "
    "regularisation (dropout, weight decay), a bug in the model or the target encoding, or "
    "labels that contradict each other in the batch"
)


def model_checks(
    config: Config, data: PreparedData, model: Model, *, quick: bool
) -> list[CheckResult]:
    """Parameters, forward/backward, initial loss, gradients, overfitting (unless quick), cost.

    The model itself is never touched: every check runs on ``copy.deepcopy(model.network)``.
    """
    from mlsmith.models.neural import NeuralModel
    from mlsmith.training.device import resolve_device

    if not isinstance(model, NeuralModel):
        reason = f"not a torch network ({type(model).__name__})"
        return [
            CheckResult("model", "model checks", "skip", reason),
            CheckResult("cost", "training cost", "skip", reason),
        ]
    cfg = config.train
    device = resolve_device(cfg.device)
    rows = _sample_rows(len(data.train), cfg.batch_size * (1 + TIMED_STEPS), config.seed)
    inputs, target = _first_batch(model, data, rows[: cfg.batch_size], device)

    network = copy.deepcopy(model.network).to(device)
    results = [parameter_counts(network)]
    step_results, healthy = forward_backward(network, inputs, target, model.task)
    results += step_results
    del network

    if quick:
        results.append(CheckResult("model", "one-batch overfit", "skip", "quick mode"))
    elif not healthy:
        results.append(
            CheckResult("model", "one-batch overfit", "skip", "the forward/backward pass failed")
        )
    else:
        few = min(len(target), OVERFIT_ROWS)
        fixed = ({k: v[:few] for k, v in inputs.items()}, target[:few])
        results.append(
            overfit_one_batch(
                copy.deepcopy(model.network).to(device),
                *fixed,
                model.task,
                cfg.optimizer,
                grad_clip=cfg.grad_clip,
            )
        )

    if not healthy:
        results.append(
            CheckResult("cost", "training cost", "skip", "the forward/backward pass failed")
        )
        return results
    from mlsmith.data.batches import BatchOptions

    batches = model.preprocessor.batches(
        {k: v[rows] for k, v in data.train.inputs.items()},
        data.train.target[rows],
        BatchOptions(cfg.batch_size, train=True),  # augmentation is part of a step's cost
    )
    results.append(
        training_cost(
            copy.deepcopy(model.network).to(device),
            batches,
            model.task,
            cfg,
            device,
            n_train=len(data.train),
        )
    )
    return results


def parameter_counts(network: torch.nn.Module) -> CheckResult:
    """Total and trainable parameters."""
    total = sum(p.numel() for p in network.parameters())
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    if trainable == 0:
        return CheckResult("model", "parameters", "fail", f"{total:,} parameters, none trainable")
    if trainable < total:
        detail = f"{trainable:,} trainable, {total - trainable:,} frozen"
    else:
        detail = f"{total:,} parameters, all trainable"
    return CheckResult("model", "parameters", "pass", detail)


def forward_backward(
    network: torch.nn.Module, inputs: Inputs, target: torch.Tensor, task: Task
) -> tuple[list[CheckResult], bool]:
    """One forward and backward pass on a real batch: output shape, initial loss, gradients.

    Returns the results and whether the pass was healthy enough to train on (a finite loss
    from outputs of the right shape). Changes ``network``'s weights only when a second pass is
    needed (see :func:`gradient_flow`): pass a copy.
    """
    network.train()
    network.zero_grad(set_to_none=True)
    try:
        output = network(**inputs)
    except Exception as error:  # the check's purpose: report a model that breaks on real data
        return [_failed_pass("forward pass", error)], False
    shape = output_shape(output, task.output_shape(inputs, len(target)), task)
    if shape.status == "fail":
        return [shape], False
    try:
        loss = task.loss(output, target)
    except Exception as error:
        return [shape, _failed_pass("loss", error)], False
    initial = initial_loss(float(loss.detach()), output.detach(), target, task)
    if not math.isfinite(float(loss.detach())):
        return [shape, initial], False
    loss.backward()
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in inputs.items())
    ran = CheckResult(
        "model", "forward and backward", "pass", f"ran on a batch of {len(target)} ({shapes})"
    )
    flow = gradient_flow(network, lambda: task.loss(network(**inputs), target))
    return [ran, shape, initial, flow], True


def output_shape(output: torch.Tensor, expected: tuple[int, ...], task: Task) -> CheckResult:
    """Raw outputs must have the task's shape (``(B, task.n_outputs)`` for rows)."""
    found = tuple(output.shape)
    if found != expected:
        batch = f" for a batch of {expected[0]}" if expected else ""
        needs = f"({', '.join(['batch', *map(str, expected[1:])])})" if expected else "a scalar"
        return CheckResult(
            "model", "output shape", "fail", f"outputs {found}{batch}; {task.kind} needs {needs}"
        )
    return CheckResult("model", "output shape", "pass", f"{found}, as {task.kind} needs")


def initial_loss(
    loss: float, output: torch.Tensor, target: torch.Tensor, task: Task
) -> CheckResult:
    """The first loss against :func:`expected_initial_loss`; a non-finite one fails."""
    if not math.isfinite(loss):
        return CheckResult(
            "model",
            "initial loss",
            "fail",
            f"loss is {loss} on a real batch: look for extreme input values or a broken layer",
        )
    if isinstance(task, ClassificationTask) and task.loss_options.is_plain:
        expected = math.log(len(task.classes))
        reference = f"ln({len(task.classes)}) = {expected:.3f}"
    elif isinstance(task, ClassificationTask):
        # Class weights, focal loss or label smoothing move the loss of uniform predictions
        # away from ln(C): the reference is that loss itself, on this batch.
        with torch.no_grad():
            expected = float(task.loss(torch.zeros_like(output, dtype=torch.float32), target))
        reference = f"{expected:.3f} (the configured loss of uniform predictions)"
    elif task.kind == "detection":
        detail = f"{loss:.3f} (a detector's summed losses have no fixed reference)"
        return CheckResult("model", "initial loss", "pass", detail)
    elif task.kind == "segmentation":
        # A network may start at equal logits (torchvision's) or at the class frequencies
        # (the UNet): either loss is a sound start.
        with torch.no_grad():
            uniform = float(task.loss(torch.zeros_like(output, dtype=torch.float32), target))
            labelled = target[target != 255].long().flatten()
            counts = torch.bincount(labelled, minlength=output.shape[1]).float() + 1.0
            prior = (counts / counts.sum()).log().view(1, -1, 1, 1).expand_as(output)
            frequent = float(task.loss(prior.contiguous(), target))
        low, high = LOSS_BAND
        detail = (
            f"{loss:.3f}, expected about {uniform:.3f} (uniform predictions) or {frequent:.3f} "
            "(the batch's class frequencies)"
        )
        if low * min(uniform, frequent) <= loss <= high * max(uniform, frequent):
            return CheckResult("model", "initial loss", "pass", detail)
        return CheckResult("model", "initial loss", "warn", f"{detail}; check the last layer")
    elif task.kind == "ranking":
        # Equal scores: each list's softmax is uniform, the listwise loss about ln(items).
        with torch.no_grad():
            expected = float(task.loss(torch.zeros_like(output, dtype=torch.float32), target))
        reference = f"{expected:.3f} (the listwise loss of equal scores)"
    else:
        # Judged against zero outputs: large untrained outputs are what this check is for.
        expected = float(target.float().square().mean())
        reference = f"{expected:.3f} (the standardised target's mean square)"
    low, high = LOSS_BAND
    detail = f"{loss:.3f}, expected about {reference}"
    if expected > 0 and not low * expected <= loss <= high * expected:
        scale = float(output.float().abs().mean())
        if loss > high * expected:
            reason = (
                f"the untrained outputs are large (mean |output| {scale:.3g}): initialise the "
                "last layer near zero, or check the target encoding"
            )
        else:
            reason = "the untrained model already fits the batch: check for a leaked target"
        return CheckResult("model", "initial loss", "warn", f"{detail}; {reason}")
    return CheckResult("model", "initial loss", "pass", detail)


def gradient_flow(
    network: torch.nn.Module, recompute: Callable[[], torch.Tensor] | None = None
) -> CheckResult:
    """Every trainable parameter has a finite, non-zero gradient (call after ``backward()``).

    No gradient at all (``grad is None``) means the tensor is not connected to the loss: a
    detached output or an unused layer. An all-zero gradient can be innocent at initialisation:
    a layer feeding a zero-initialised head gets zero until the head has moved. So when some
    gradients are zero and ``recompute`` (a function returning a fresh loss) is given, the
    network takes one small sign-of-gradient step and the gradients are computed again; only
    tensors still at zero fail. Frozen tensors (``requires_grad=False``) are listed, not failed.
    """
    named = list(network.named_parameters())
    frozen = [name for name, p in named if not p.requires_grad]
    trainable = [(name, p) for name, p in named if p.requires_grad]
    disconnected = [name for name, p in trainable if p.grad is None]
    infinite = [
        name for name, p in trainable if p.grad is not None and not bool(p.grad.isfinite().all())
    ]
    zero = [name for name, p in trainable if p.grad is not None and not bool(p.grad.any())]
    if zero and recompute is not None and not infinite:
        with torch.no_grad():
            for _, p in trainable:
                if p.grad is not None:
                    p.sub_(1e-3 * p.grad.sign())
        network.zero_grad(set_to_none=True)
        recompute().backward()
        grads = {name: p.grad for name, p in trainable}
        zero = [name for name in zero if not _nonzero(grads[name])]
    frozen_note = f"; {len(frozen)} frozen tensors ({_names(frozen)})" if frozen else ""
    problems = []
    if disconnected:
        problems.append(
            f"no gradient reaches {_names(disconnected)} (not connected to the loss: a detached "
            "output or an unused layer)"
        )
    if infinite:
        problems.append(f"non-finite gradient in {_names(infinite)}")
    if zero:
        problems.append(f"zero gradient in {_names(zero)} (dead units or a constant input?)")
    if problems:
        return CheckResult("model", "gradient flow", "fail", "; ".join(problems) + frozen_note)
    norm = math.sqrt(
        sum(float(p.grad.float().square().sum()) for _, p in trainable if p.grad is not None)
    )
    return CheckResult(
        "model",
        "gradient flow",
        "pass",
        f"all {len(trainable)} trainable tensors get finite, non-zero gradients (norm "
        f"{norm:.3g}){frozen_note}",
    )


def _without_smoothing(task: Task) -> Task:
    """``task`` with label smoothing off: smoothed targets put a floor under the loss that no
    amount of memorising gets below, so the 90% drop is judged on the unsmoothed loss."""
    if not isinstance(task, ClassificationTask) or task.loss_options.label_smoothing == 0.0:
        return task
    unsmoothed = copy.copy(task)
    unsmoothed.loss_options = dataclasses.replace(task.loss_options, label_smoothing=0.0)
    return unsmoothed


def overfit_one_batch(
    network: torch.nn.Module,
    inputs: Inputs,
    target: torch.Tensor,
    task: Task,
    optimizer: OptimizerConfig,
    *,
    grad_clip: float | None = None,
    max_steps: int = OVERFIT_STEPS,
    max_seconds: float = OVERFIT_SECONDS,
) -> CheckResult:
    """Train ``network`` (a copy) on one fixed batch; pass when the loss falls by 90%.

    A model that cannot memorise a handful of rows with the configured optimizer will not learn
    the whole dataset either. Stops as soon as the loss is down by ``OVERFIT_DROP``.
    """
    from mlsmith.training.optimizers import build_optimizer
    from mlsmith.training.precision import Precision
    from mlsmith.training.step import optimizer_step

    name = "one-batch overfit"
    task = _without_smoothing(task)
    opt = build_optimizer(network, optimizer)
    network.train()
    network.zero_grad(set_to_none=True)  # the earlier checks' gradients are not this step's
    started = time.perf_counter()
    first = last = math.nan
    step = 0
    full_precision = Precision(target.device)
    while step < max_steps and time.perf_counter() - started < max_seconds:
        # The loss is measured before the step's update (on a copy: the last update is moot).
        loss = optimizer_step(
            [(inputs, target)],
            forward=network,
            loss_fn=task.loss,
            optimizer=opt,
            precision=full_precision,
            clip=grad_clip,
        ).loss
        last = float(loss)
        if step == 0:
            first = last
        if not math.isfinite(last):
            return CheckResult(
                "model",
                name,
                "fail",
                f"loss became {last} at step {step + 1} (from {first:.3g}): learning rate too "
                "high, or extreme inputs; try a lower train.optimizer.lr or train.grad_clip",
            )
        if last <= (1.0 - OVERFIT_DROP) * first:
            return CheckResult(
                "model",
                name,
                "pass",
                f"loss {first:.3g} -> {last:.3g} in {step} steps on {len(target)} rows",
            )
        step += 1
    drop = 1.0 - last / first if first > 0 else 0.0
    progress = (
        f"loss {first:.3g} -> {last:.3g} ({drop:.0%} lower) after {step} steps "
        f"({time.perf_counter() - started:.1f} s) on {len(target)} rows at lr {optimizer.lr:g}"
    )
    if step < max_steps:
        # Out of time, not out of steps: a slow model on a slow machine is not a broken one.
        return CheckResult(
            "model", name, "warn", f"{progress}; out of time before {max_steps} steps, inconclusive"
        )
    clashes = contradicting_rows(inputs, target)
    if clashes:
        # Identical inputs with different labels put a floor under the loss: name it first.
        progress += (
            f"; {clashes} rows of the batch have the same inputs as a row with another label "
            "(e.g. empty texts), so the loss cannot reach zero"
        )
    return CheckResult("model", name, "fail", f"{progress}; {OVERFIT_CAUSES}")


def contradicting_rows(inputs: Inputs, target: torch.Tensor) -> int:
    """Rows whose inputs equal another row's while their targets differ."""
    flat = torch.cat([v.detach().reshape(len(v), -1).double().cpu() for v in inputs.values()], 1)
    labels = target.detach().reshape(len(target), -1).double().cpu()
    targets_by_input: dict[bytes, set[bytes]] = {}
    keys = [row.numpy().tobytes() for row in flat]
    for key, label in zip(keys, labels, strict=True):
        targets_by_input.setdefault(key, set()).add(label.numpy().tobytes())
    return sum(1 for key in keys if len(targets_by_input[key]) > 1)


# --- helpers ----------------------------------------------------------------------------------


def _sample_rows(n: int, count: int, seed: int) -> np.ndarray:
    """Random training rows from a local generator, so the global RNGs are not drawn from."""
    return np.random.default_rng(seed).permutation(n)[: min(n, count)]


def _first_batch(
    model: Any, data: PreparedData, rows: np.ndarray, device: torch.device
) -> tuple[Inputs, torch.Tensor]:
    """A real batch as the model sees it (no augmentation), on ``device``."""
    from mlsmith.data.batches import BatchOptions

    batches = model.preprocessor.batches(
        {k: v[rows] for k, v in data.train.inputs.items()},
        data.train.target[rows],
        BatchOptions(len(rows), train=False),
    )
    inputs, target = next(iter(batches))
    return {k: v.to(device) for k, v in inputs.items()}, target.to(device)


def _nonzero(grad: torch.Tensor | None) -> bool:
    return grad is not None and bool(grad.any())


def _failed_pass(what: str, error: Exception) -> CheckResult:
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return CheckResult(
        "model",
        "forward and backward",
        "fail",
        f"the {what} raised {type(error).__name__}: {message}",
    )


def _names(names: list[str], limit: int = 5) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
