"""What the trainer watches while it runs: per-step gradient norms, non-finite values, overfitting.

The loop hands each optimizer step's loss and gradient norms to a :class:`StepMonitor` as device
tensors and never waits for them; the monitor reads them in bulk, so a NaN is caught with the
step, the learning rate and the parameters whose gradients first went non-finite, before the bad
update reaches a checkpoint (on the CPU before it reaches the weights).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mlsmith.errors import MlsmithError

# Steps between looks at the recorded values on a GPU: each look waits for queued kernels.
CUDA_CHECK_EVERY = 25
STEP_COLUMNS = ("step", "epoch", "lr", "loss", "grad_norm")
# steps.csv's per-layer columns: "grad_norm/<layer>", filled on the sampled steps only.
LAYER_PREFIX = "grad_norm/"
# A layer whose typical gradient norm is this far below the largest layer's is "vanishing"...
VANISHING_RATIO = 1e-3
# ...and a run whose gradient norms grow this much from the first samples to the last, "exploding".
EXPLODING_GROWTH = 1e3


class NonFiniteLossError(MlsmithError):
    """The training loss or the gradients became NaN or infinite."""

    exit_code = 1


class OutOfMemoryError(MlsmithError):
    """The device ran out of memory during training; the message says what to change."""

    exit_code = 1


# What torch's CPU allocator says when the host cannot give it memory (a RuntimeError).
HOST_ALLOCATION_FAILED = "DefaultCPUAllocator: can't allocate memory"


def out_of_memory_error(error: BaseException) -> bool:
    """Whether ``error`` is memory running out: on a GPU (torch.OutOfMemoryError) or on the
    host (Python's MemoryError, or torch's CPU allocator failing)."""
    if isinstance(error, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(error, RuntimeError) and HOST_ALLOCATION_FAILED in str(error)


def out_of_memory(
    error: BaseException, device: torch.device, where: str, settings: dict[str, Any]
) -> OutOfMemoryError:
    """The diagnosis of a device out of memory: where, at what peak, what to change.

    ``where``: e.g. "epoch 2, step 130"; ``settings``: the train.* values that set the
    memory a step needs (batch_size, grad_accum_steps, precision, gradient_checkpointing).
    """
    # The RAM, whatever the training device.
    host = not isinstance(error, torch.cuda.OutOfMemoryError)
    if host:
        device = torch.device("cpu")
    peak = peak_memory_mb(device)
    total = math.nan
    if device.type == "cuda":
        # The device may be gone, or never have been there (a test raising the error on a CPU).
        with contextlib.suppress(RuntimeError, AssertionError):
            total = torch.cuda.get_device_properties(device).total_memory / 2**20
    elif hasattr(os, "sysconf"):
        with contextlib.suppress(ValueError, OSError):
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    used = f"{peak:,.0f} MB at the peak" + (f" of {total:,.0f} MB" if math.isfinite(total) else "")
    batch, accumulate = settings["batch_size"], settings["grad_accum_steps"]
    fixes = [
        f"lower train.batch_size (now {batch}) and raise train.grad_accum_steps (now "
        f"{accumulate}) by the same factor: the same update, with less memory per step"
    ]
    if settings["precision"] == "32":
        fixes.append("set train.precision=bf16-mixed (or 16-mixed on older GPUs)")
    if not settings["gradient_checkpointing"]:
        fixes.append("set train.gradient_checkpointing=true (where the model supports it)")
    fixes.append("use a smaller model")
    if host:
        fixes.append("for a table larger than memory, data.stream=true (reads it in chunks)")
    told = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    what = "the host's memory (RAM)" if host else str(device)
    return OutOfMemoryError(
        f"{what} ran out of memory in {where} ({used}): {told}. Likely fixes: " + "; ".join(fixes)
    )


@dataclass(slots=True)
class _Pending:
    step: int
    epoch: int
    lr: float
    loss: torch.Tensor
    total: torch.Tensor | None  # () total gradient norm, before clipping
    norms: torch.Tensor | None  # (P,) per-parameter gradient norms, before clipping
    layers: torch.Tensor | None = None  # (L,) per-layer norms, on the sampled steps only


@dataclass
class StepMonitor:
    """Records every optimizer step and stops training at the first non-finite loss or gradient.

    ``names`` are the parameter names in the order the norms come in. ``scaled`` is true under
    fp16 with a GradScaler: there, overflowing gradients are expected now and then (the scaler
    skips that update and lowers the scale), so only a non-finite *loss* stops training.
    ``checkpoint`` is the last-good checkpoint a diagnosis names. ``params`` (in ``names``'
    order) let a diagnosis on the CPU name the culprits from the gradients themselves when a
    step measured only the total norm.

    Every ``layer_every`` steps (and the first), the gradient norm of each layer (a module's
    parameters together: ``net.0.weight`` and ``net.0.bias`` are layer ``net.0``) is sampled
    too, from the per-parameter norms the step measured or, where it measured only the total,
    from the gradients (still there: the update has not happened). A few norms every N steps
    cost nothing next to the steps themselves; :meth:`layer_samples` gives them.

    On the CPU each step's loss and gradient norm are read and checked before its update: a read
    costs a microsecond there, and a NaN never reaches the weights. On a GPU any read waits for
    the device, so the values stay device tensors and are read in bulk every
    :data:`CUDA_CHECK_EVERY` steps: a NaN is caught a few steps late, and the last good
    checkpoint (no non-finite weights are ever checkpointed) is what is kept.
    """

    names: list[str]
    device: torch.device
    scaled: bool = False
    precision: str = "32"  # train.precision, for the advice when a value goes non-finite
    checkpoint: Path | None = None
    params: list[torch.nn.Parameter] | None = None
    layer_every: int = 0
    _rows: list[tuple[float, ...]] = field(default_factory=list)
    _pending: list[_Pending] = field(default_factory=list)
    _layer_rows: list[tuple[float, ...]] = field(default_factory=list)
    _layer_index: torch.Tensor | None = None
    layers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.layers = list(dict.fromkeys(layer_of(name) for name in self.names))
        if self.layer_every and self.params is not None:
            position = {layer: i for i, layer in enumerate(self.layers)}
            self._layer_index = torch.tensor([position[layer_of(n)] for n in self.names])
        else:
            self.layer_every = 0  # nothing to measure the layers from

    @property
    def rows(self) -> list[tuple[float, ...]]:
        """Every step so far: (step, epoch, lr, loss, gradient norm before clipping)."""
        self.flush(check=False)  # read after a failure too: never raise from here
        return self._rows

    @rows.setter
    def rows(self, rows: list[tuple[float, ...]]) -> None:
        self._pending = []
        self._rows = rows

    def layer_samples(self) -> list[tuple[float, ...]]:
        """The sampled steps' per-layer norms: (step, norm of ``layers[0]``, ...), in step order."""
        self.flush(check=False)
        return self._layer_rows

    def _sampled(self, step: int) -> bool:
        return self.layer_every > 0 and (step == 1 or step % self.layer_every == 0)

    def _layer_norms(self, norms: torch.Tensor | None) -> torch.Tensor:
        """(L,) layer norms from the (P,) per-parameter ones, or from the gradients."""
        assert self._layer_index is not None and self.params is not None
        if norms is None:
            norms = gradient_norms(self.params)
        squares = norms.detach().float().square()
        index = self._layer_index.to(squares.device)
        return torch.zeros(len(self.layers), device=squares.device).index_add_(0, index, squares)

    def record(
        self,
        step: int,
        epoch: int,
        lr: float,
        loss: torch.Tensor,
        norms: torch.Tensor | None,
        total: torch.Tensor | None = None,
    ) -> None:
        """Queue one step's values (device tensors, not read yet)."""
        if total is None and norms is not None:
            total = torch.linalg.vector_norm(norms.float())
        layers = self._layer_norms(norms) if self._sampled(step) else None
        self._pending.append(_Pending(step, epoch, lr, loss.detach(), total, norms, layers))

    def observe(
        self,
        step: int,
        epoch: int,
        lr: float,
        loss: torch.Tensor,
        total: torch.Tensor | None,
        norms: torch.Tensor | None,
    ) -> None:
        """Record one step before its update and check it as the device allows (see above)."""
        if self.device.type == "cuda":
            self.record(step, epoch, lr, loss, norms, total)
            if len(self._pending) >= CUDA_CHECK_EVERY:
                self.flush()
            return
        # On the CPU a read waits for nothing: two numbers, checked before the weights change.
        if self._pending:
            self.flush()
        value = float(loss)
        grad = math.nan if total is None else float(total)
        if not math.isfinite(value) or (
            total is not None and not self.scaled and not math.isfinite(grad)
        ):
            if norms is None and self.params is not None:
                norms = gradient_norms(self.params)  # the update has not happened yet
            culprits = self._non_finite(norms) if norms is not None else []
            pending = _Pending(step, epoch, lr, loss, total, norms)
            raise NonFiniteLossError(self._diagnosis(pending, value, grad, culprits))
        self._rows.append((step, epoch, lr, value, grad))
        if self._sampled(step):
            squares = self._layer_norms(norms).tolist()
            self._layer_rows.append((step, *(math.sqrt(v) for v in squares)))

    def flush(self, check: bool = True) -> None:
        """Read the queued values; raise :class:`NonFiniteLossError` at the first bad step
        (unless ``check`` is false: then bad steps are rows like the others)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        losses = torch.stack([p.loss.float() for p in pending]).cpu().tolist()
        totals: list[float] = [math.nan] * len(pending)
        measured = [p.total.float() for p in pending if p.total is not None]
        if len(measured) == len(pending):
            totals = torch.stack(measured).cpu().tolist()
        for p, loss, total in zip(pending, losses, totals, strict=True):
            bad_grads = p.total is not None and not math.isfinite(total) and not self.scaled
            if check and (not math.isfinite(loss) or bad_grads):
                culprits = self._non_finite(p.norms) if p.norms is not None else []
                raise NonFiniteLossError(self._diagnosis(p, loss, total, culprits))
            self._rows.append((p.step, p.epoch, p.lr, loss, total))
            if p.layers is not None:
                squares = p.layers.cpu().tolist()
                self._layer_rows.append((p.step, *(math.sqrt(v) for v in squares)))

    def _non_finite(self, norms: torch.Tensor) -> list[str]:
        return [
            name
            for name, value in zip(self.names, norms.float().cpu().tolist(), strict=True)
            if not math.isfinite(value)
        ]

    def _diagnosis(self, p: _Pending, loss: float, total: float, culprits: list[str]) -> str:
        what = (
            f"the loss became {loss}"
            if not math.isfinite(loss)
            else f"the gradients became non-finite (loss {loss:.4g}, gradient norm {total})"
        )
        layers = ""
        if culprits:
            shown = ", ".join(culprits[:5]) + (
                f" (+{len(culprits) - 5} more)" if len(culprits) > 5 else ""
            )
            layers = f"; first non-finite gradients in: {shown}"
        return (
            f"training stopped at step {p.step} (epoch {p.epoch}): {what} at learning rate "
            f"{p.lr:.3g}{layers}. {at_stake(self.checkpoint)}Likely fixes: lower "
            f"train.optimizer.lr (try {p.lr / 10:.2g}; `mlsmith lr-find` suggests one), set "
            f"train.grad_clip (e.g. 1.0), {precision_advice(self.precision)}or check the inputs "
            "for extreme or non-finite values"
        )

    def epoch_stats(self, epoch: int) -> dict[str, float]:
        """Mean and max gradient norm over an epoch's recorded steps."""
        norms = [r[4] for r in rows_of_epoch(self.rows, epoch) if math.isfinite(r[4])]
        if not norms:
            return {}
        return {"grad_norm": sum(norms) / len(norms), "grad_norm_max": max(norms)}

    def state_dict(self) -> dict[str, Any]:
        # A tensor keeps checkpoints compact and loadable with weights_only=True.
        rows = self.rows
        layer_rows = self._layer_rows
        return {
            "rows": torch.tensor(rows, dtype=torch.float64).reshape(-1, len(STEP_COLUMNS)),
            "layers": torch.tensor(layer_rows, dtype=torch.float64).reshape(
                -1, 1 + len(self.layers)
            ),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = [tuple(row) for row in state["rows"].tolist()]
        # Checkpoints from before per-layer sampling hold no "layers".
        layers = state.get("layers")
        width = 1 + len(self.layers)
        if layers is not None and layers.shape[-1] == width:
            self._layer_rows = [tuple(row) for row in layers.tolist()]
        else:
            self._layer_rows = []


def layer_of(name: str) -> str:
    """The layer a parameter belongs to: its module's name (``net.0.weight`` -> ``net.0``)."""
    return name.rsplit(".", 1)[0] if "." in name else name


def gradient_flow(layers: list[str], samples: list[tuple[float, ...]]) -> str | None:
    """An observation on vanishing or exploding gradients from the sampled layer norms, or None.

    Vanishing: a layer whose median norm over the samples is below :data:`VANISHING_RATIO`
    of the largest layer's (it barely learns). Exploding: the total norm of the last samples
    :data:`EXPLODING_GROWTH` times that of the first ones.
    """
    import numpy as np

    if not layers or len(samples) < 2:
        return None
    norms = np.array([row[1:] for row in samples], dtype=np.float64)
    norms = np.where(np.isfinite(norms), norms, np.nan)
    typical = np.nanmedian(norms, axis=0)
    # A layer whose gradient was exactly zero at every sample takes no part in the loss (a
    # detector's pyramid level its heads never read): unused, not vanishing.
    unused = np.nan_to_num(norms, nan=0.0).max(axis=0) == 0.0
    notes = []
    top = float(np.nanmax(typical)) if np.isfinite(typical).any() else math.nan
    if math.isfinite(top) and top > 0:
        weak = [
            f"{layer} ({value:.2g})"
            for layer, value, idle in zip(layers, typical, unused, strict=True)
            if math.isfinite(value) and value < VANISHING_RATIO * top and not idle
        ]
        if weak:
            shown = ", ".join(weak[:5]) + (f" (+{len(weak) - 5} more)" if len(weak) > 5 else "")
            notes.append(
                f"vanishing gradients: the median gradient norm of {shown} is under "
                f"{VANISHING_RATIO:g} of the largest layer's ({top:.2g}); those layers barely "
                "learn: consider normalisation layers, residual connections, a different "
                "activation or initialisation"
            )
    totals = np.sqrt(np.nansum(norms**2, axis=1))
    k = max(1, len(totals) // 4)
    first, last = float(np.median(totals[:k])), float(np.median(totals[-k:]))
    if first > 0 and last > EXPLODING_GROWTH * first:
        notes.append(
            f"exploding gradients: the gradient norm grew from {first:.3g} to {last:.3g} over "
            "training; consider train.grad_clip (e.g. 1.0) or a lower learning rate"
        )
    return "; ".join(notes) if notes else None


def at_stake(checkpoint: Path | None) -> str:
    """What a stop leaves behind, for a diagnosis: the last good checkpoint, if any."""
    if checkpoint is not None and checkpoint.exists():
        return f"The last good checkpoint, {checkpoint}, is intact. "
    return "No checkpoint had been written yet. "


def precision_advice(precision: str) -> str:
    """The precision change worth trying after a NaN, if any (none at full precision)."""
    if precision == "16-mixed":
        return "use train.precision=32 or bf16-mixed (fp16 overflows above 65504), "
    if precision == "bf16-mixed":
        return "use train.precision=32, "
    return ""


def rows_of_epoch(rows: list[tuple[float, ...]], epoch: int) -> list[tuple[float, ...]]:
    """The step rows of ``epoch``, read from the end: rows are in step order, so this costs the
    epoch's steps, not the whole run's, each epoch."""
    start = len(rows)
    while start > 0 and int(rows[start - 1][1]) >= epoch:
        start -= 1
    return [r for r in rows[start:] if int(r[1]) == epoch]


def gradient_norms(parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    """Per-parameter gradient L2 norms as one (P,) tensor; 0 for a parameter without a gradient."""
    return gradient_norms_and_total(parameters)[0]


def gradient_norms_and_total(
    parameters: list[torch.nn.Parameter],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-parameter gradient L2 norms (P,), 0 where there is no gradient, and their total.

    The total is computed as ``torch.nn.utils.clip_grad_norm_`` computes it (over the gradients
    present), so clipping with it gives torch's update exactly. One fused kernel per device for
    the per-parameter norms: ``torch._foreach_norm`` is private (torch's own clipping uses it),
    so this is the one place that calls it, with the per-tensor public equivalent should it go.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(len(parameters)), torch.zeros(())
    foreach_norm = getattr(torch, "_foreach_norm", None)
    computed = (
        foreach_norm(grads)
        if foreach_norm is not None
        else [torch.linalg.vector_norm(g) for g in grads]
    )
    present = torch.stack(computed)
    total = torch.linalg.vector_norm(present)
    if len(grads) == len(parameters):  # the usual case: nothing to fill in
        return present, total
    norms = iter(computed)
    zero = torch.zeros((), device=grads[0].device)
    return torch.stack([next(norms) if p.grad is not None else zero for p in parameters]), total


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of ``tensors`` is finite.

    One fused norm per tensor first (six times faster than ``isfinite().all()`` on a 256x256
    weight): a NaN or infinity makes its norm non-finite. A norm can also overflow on huge finite
    values, so a non-finite norm is confirmed element by element before the answer is no.
    """
    if not tensors:
        return True
    with torch.no_grad():
        foreach_norm = getattr(torch, "_foreach_norm", None)
        if foreach_norm is not None:
            norms = torch.stack([n.float() for n in foreach_norm(tensors)])
            if bool(norms.isfinite().all()):
                return True
        return all(bool(t.isfinite().all()) for t in tensors)


class OverfitWatch:
    """Notices validation loss rising while training loss falls, ``patience`` epochs in a row."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.streak = 0
        self.previous: tuple[float, float] | None = None

    def update(self, epoch: int, train_loss: float, val_loss: float) -> str | None:
        """Record one epoch; returns an observation when the streak reaches ``patience``."""
        previous, self.previous = self.previous, (train_loss, val_loss)
        if self.patience == 0 or previous is None:
            return None
        diverging = train_loss < previous[0] and val_loss > previous[1]
        self.streak = self.streak + 1 if diverging else 0
        if self.streak != self.patience:
            return None
        return (
            f"overfitting: validation loss rose while training loss fell for {self.patience} "
            f"epochs in a row (epochs {epoch - self.patience + 1}-{epoch}); consider more "
            "regularisation (dropout, weight decay), more data or augmentation, or fewer epochs"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"streak": self.streak, "previous": list(self.previous) if self.previous else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.streak = state["streak"]
        previous = state["previous"]
        self.previous = (previous[0], previous[1]) if previous else None


def gpu_stats(device: torch.device) -> dict[str, float]:
    """On CUDA: the GPU's utilisation now (percent of the last sample period with a kernel
    running, as nvidia-smi shows it) and the peak memory the caching allocator reserved (what
    the GPU sees used, beside ``memory_mb``'s allocated peak); nothing elsewhere."""
    if device.type != "cuda":
        return {}
    stats = {"gpu_memory_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20}
    # No NVML here (nvidia-ml-py missing, or the driver lacks it): no utilisation figure.
    with contextlib.suppress(Exception):
        stats["gpu_util_pct"] = float(torch.cuda.utilization(device))
    return stats


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: allocated CUDA memory on a GPU, the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows
        return math.nan
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
