"""What the trainer watches while it runs: per-step gradient norms, non-finite values, overfitting.

The loop hands each optimizer step's loss and per-parameter gradient norms to a
:class:`StepMonitor` as device tensors and never waits for them; the monitor copies them to the
CPU in one transfer every few steps (every step on the CPU, where that costs nothing), so a NaN
is caught within a few steps with the step, the learning rate and the parameters whose gradients
first went non-finite, before the bad update reaches a checkpoint.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from mlsmith.errors import MlsmithError

# Steps between looks at the recorded values on a GPU: each look waits for queued kernels.
CUDA_CHECK_EVERY = 25
STEP_COLUMNS = ("step", "epoch", "lr", "loss", "grad_norm")


class NonFiniteLossError(MlsmithError):
    """The training loss or the gradients became NaN or infinite."""

    exit_code = 1


@dataclass
class _Pending:
    step: int
    epoch: int
    lr: float
    loss: torch.Tensor
    norms: torch.Tensor | None  # (P,) per-parameter gradient norms, before clipping


@dataclass
class StepMonitor:
    """Records every optimizer step and stops training at the first non-finite loss or gradient.

    ``names`` are the parameter names in the order the norms come in. ``scaled`` is true under
    fp16 with a GradScaler: there, overflowing gradients are expected now and then (the scaler
    skips that update and lowers the scale), so only a non-finite *loss* stops training.
    """

    names: list[str]
    device: torch.device
    scaled: bool = False
    precision: str = "32"  # train.precision, for the advice when a value goes non-finite
    rows: list[tuple[float, ...]] = field(default_factory=list)
    _pending: list[_Pending] = field(default_factory=list)

    @property
    def check_every(self) -> int:
        return CUDA_CHECK_EVERY if self.device.type == "cuda" else 1

    def record(
        self, step: int, epoch: int, lr: float, loss: torch.Tensor, norms: torch.Tensor | None
    ) -> None:
        """Queue one step's values (device tensors, not read yet)."""
        self._pending.append(_Pending(step, epoch, lr, loss.detach(), norms))

    def due(self) -> bool:
        return len(self._pending) >= self.check_every

    def flush(self, where: str = "") -> None:
        """Read the queued values; raise :class:`NonFiniteLossError` at the first bad step.

        ``where`` says what is at stake for the message (e.g. the last good checkpoint).
        """
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        losses = torch.stack([p.loss.float() for p in pending]).cpu()
        recorded = [p.norms for p in pending if p.norms is not None]
        norms = (
            torch.stack(recorded).float().cpu() if len(recorded) == len(pending) else None
        )  # (S, P)
        totals = norms.norm(dim=1) if norms is not None else torch.full((len(pending),), math.nan)
        for i, p in enumerate(pending):
            loss, total = float(losses[i]), float(totals[i])
            bad_grads = norms is not None and not math.isfinite(total) and not self.scaled
            if not math.isfinite(loss) or bad_grads:
                culprits = self._non_finite(norms[i]) if norms is not None else []
                raise NonFiniteLossError(
                    self._diagnosis(p, loss, total, culprits, where, self.precision)
                )
            self.rows.append((p.step, p.epoch, p.lr, loss, total))

    def _non_finite(self, norms: torch.Tensor) -> list[str]:
        return [
            name
            for name, value in zip(self.names, norms.tolist(), strict=True)
            if not math.isfinite(value)
        ]

    @staticmethod
    def _diagnosis(
        p: _Pending, loss: float, total: float, culprits: list[str], where: str, precision: str
    ) -> str:
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
            f"{p.lr:.3g}{layers}. {where}Likely fixes: lower train.optimizer.lr (try "
            f"{p.lr / 10:.2g}; `mlsmith lr-find` suggests one), set train.grad_clip (e.g. 1.0), "
            f"{precision_advice(precision)}or check the inputs for extreme or non-finite values"
        )

    def epoch_stats(self, epoch: int) -> dict[str, float]:
        """Mean and max gradient norm over an epoch's recorded steps."""
        norms = [r[4] for r in rows_of_epoch(self.rows, epoch) if math.isfinite(r[4])]
        if not norms:
            return {}
        return {"grad_norm": sum(norms) / len(norms), "grad_norm_max": max(norms)}

    def state_dict(self) -> dict[str, Any]:
        # A tensor keeps checkpoints compact and loadable with weights_only=True.
        return {"rows": torch.tensor(self.rows, dtype=torch.float64).reshape(-1, len(STEP_COLUMNS))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = [tuple(row) for row in state["rows"].tolist()]


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
    """Per-parameter gradient L2 norms as one (P,) tensor; 0 for a parameter without a gradient.

    One fused kernel per device (``_foreach_norm``) instead of a kernel per parameter.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(len(parameters))
    norms = iter(torch._foreach_norm(grads))
    zero = torch.zeros((), device=grads[0].device)
    return torch.stack([next(norms) if p.grad is not None else zero for p in parameters])


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
