"""Gradient checkpointing (``train.gradient_checkpointing``): keep fewer activations, recompute
them in the backward pass, trading about a third more compute for memory.

Both helpers use ``torch.utils.checkpoint`` without re-entrance (``use_reentrant=False``): it
preserves the RNG state, so dropout and stochastic depth draw the same masks when recomputed,
and outputs and gradients equal those of the plain network. Outside training, or without
gradients, the networks run as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any, cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def checkpointed(function: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
    """``function(*args, **kwargs)``, its activations recomputed in the backward pass."""
    output: torch.Tensor = checkpoint(function, *args, use_reentrant=False, **kwargs)
    return output


class CheckpointedSequential(nn.Sequential):
    """An ``nn.Sequential`` whose blocks each recompute their activations in the backward pass.

    :func:`checkpoint_stages` turns a network's own ``nn.Sequential`` stages into this class in
    place (``__class__`` only), so parameter names, ``state_dict`` keys and pretrained weights
    are unchanged.
    """

    checkpoint_groups: list[nn.Sequential]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        for group in self.checkpoint_groups:
            keep = partial(_keep_buffers, group)
            x = checkpoint(group, x, use_reentrant=False, context_fn=keep)
        return x


def checkpoint_stages(stages: list[nn.Sequential]) -> None:
    """Make every block of ``stages`` recompute its activations (see the class above)."""
    for stage in stages:
        stage.__class__ = CheckpointedSequential
        # Built once; a plain list, so the blocks are not registered (or saved) a second time.
        cast(CheckpointedSequential, stage).checkpoint_groups = _groups(stage)


def _groups(stage: nn.Sequential) -> list[nn.Sequential]:
    """The stage's children, an in-place activation kept with the block before it: applied
    alone it would change its checkpoint's saved input (VGG's and AlexNet's ``ReLU(inplace)``)."""
    groups: list[list[nn.Module]] = []
    for module in stage:
        if groups and getattr(module, "inplace", False):
            groups[-1].append(module)
        else:
            groups.append([module])
    return [nn.Sequential(*group) for group in groups]


def _keep_buffers(
    module: nn.Module,
) -> tuple[AbstractContextManager[Any], AbstractContextManager[Any]]:
    """Contexts for the first forward pass and for the recomputation: the recomputation puts
    the buffers back, or batch norm would count the batch twice in its running statistics."""
    return nullcontext(), _BuffersRestored(module)


class _BuffersRestored:
    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.saved: list[torch.Tensor] = []

    def __enter__(self) -> None:
        self.saved = [buffer.clone() for buffer in self.module.buffers()]

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for buffer, saved in zip(self.module.buffers(), self.saved, strict=True):
                buffer.copy_(saved)
