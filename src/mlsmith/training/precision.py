"""Numeric precision as a small swappable part: fp32, bf16 autocast, fp16 autocast + GradScaler.

The trainer calls the same five methods whatever the precision, so the loop has no branches on
it. The base class is full precision, every method a no-op or the plain call.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

log = logging.getLogger(__name__)
# nullcontext holds no state: one serves every step.
_NO_AUTOCAST = nullcontext()


class Precision:
    """Full fp32: no autocast, no scaling."""

    name = "32"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def autocast(self) -> AbstractContextManager[Any]:
        return _NO_AUTOCAST

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients to their true scale before clipping or inspecting them."""

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore for full precision."""


class BF16Mixed(Precision):
    """bf16 autocast: fp32 weights, bf16 matmuls; bf16's fp32-sized exponent needs no scaler."""

    name = "bf16-mixed"

    def autocast(self) -> AbstractContextManager[Any]:
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)


class FP16Mixed(Precision):
    """fp16 autocast with a GradScaler, so small gradients do not underflow to zero."""

    name = "16-mixed"

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.scaler = torch.amp.GradScaler(device.type)

    def autocast(self) -> AbstractContextManager[Any]:
        return torch.autocast(device_type=self.device.type, dtype=torch.float16)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        # Skips the update when the scaled gradients overflowed, then adapts the scale.
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scaler.load_state_dict(state)


def build_precision(name: str, device: torch.device) -> Precision:
    """The precision plugin for a config value; fp16 off CUDA falls back to bf16 with a warning."""
    if name == "16-mixed" and device.type != "cuda":
        log.warning(
            "precision 16-mixed needs a CUDA GPU (fp16 on %s is slow and unscaled); "
            "using bf16-mixed instead",
            device.type,
        )
        name = "bf16-mixed"
    plugins: dict[str, type[Precision]] = {
        "32": Precision,
        "bf16-mixed": BF16Mixed,
        "16-mixed": FP16Mixed,
    }
    return plugins[name](device)
