"""A network as a user writes one, outside mlsmith: ``model.type: custom`` with
``module: tests/models/user_net.py:TinyNet`` (or ``user_net.TinyNet`` on the path). It reads
whichever inputs its data kind feeds, by name, as the contract says."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, *, n_outputs: int, inputs: dict[str, Any], hidden: int = 16) -> None:
        super().__init__()
        self.inputs_seen = dict(inputs)
        if "numeric" in inputs:  # a table
            self.embeddings = nn.ModuleList(nn.Embedding(c, 4) for c in inputs["categorical"])
            width = inputs["numeric"] + 4 * len(inputs["categorical"])
        elif "vocab_size" in inputs:  # text
            self.tokens = nn.Embedding(
                inputs["vocab_size"], hidden, padding_idx=inputs["padding_id"]
            )
            width = hidden
        else:  # images
            self.conv = nn.Conv2d(inputs["channels"], 8, 3, padding=1)
            width = 8
        self.head = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs))

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        if "numeric" in batch:
            codes = batch["categorical"]
            parts = [batch["numeric"]] + [e(codes[:, j]) for j, e in enumerate(self.embeddings)]
            x = torch.cat(parts, dim=1)
        elif "input_ids" in batch:
            mask = batch["attention_mask"].unsqueeze(-1).float()
            x = (self.tokens(batch["input_ids"]) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        else:
            x = torch.relu(self.conv(batch["image"])).mean(dim=(2, 3))
        return self.head(x)


class NotANetwork:
    """Not a torch.nn.Module: refused by name."""


def mean_absolute(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A user's loss for regression: the mean absolute error of the standardised target."""
    CALLS["loss"] += 1
    return (output.float().squeeze(-1) - target).abs().mean()


CALLS = {"loss": 0, "step": 0}


class PlainSGD(torch.optim.Optimizer):
    """A user's optimizer: plain gradient descent."""

    def __init__(self, params: Any, lr: float = 0.01) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        CALLS["step"] += 1
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
