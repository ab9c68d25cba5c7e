"""The network a package runs: the trained module plus the last steps its batches took in torch.

A package's encoders produce exactly what the data kind's batches start from (tabular numerics
and codes, token ids with lengths, uint8 pixels). What the batches then did in torch (an
image's normalisation) goes into the exported graph, so the graph's inputs are the encoders'
outputs and nothing is re-implemented outside torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from mlsmith.runtime import text as runtime_text

if TYPE_CHECKING:
    from mlsmith.data.base import Preprocessor


class TabularGraph(torch.nn.Module):
    """(numeric float32 (n, F), categorical int64 (n, K)) -> raw outputs."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        # By name, as training calls it: a custom network may take its inputs as **batch.
        return self.network(numeric=numeric, categorical=categorical).float()


class TextGraph(torch.nn.Module):
    """(input_ids int64 (n, T), attention_mask bool (n, T)) -> raw outputs."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.network(input_ids=input_ids, attention_mask=attention_mask).float()


class ImageGraph(torch.nn.Module):
    """uint8 (n, C, H, W) -> normalised as the training batches did -> raw outputs."""

    def __init__(self, network: torch.nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.network = network
        # The same float32 constants, in the same order of operations, as the batches' Normalize.
        std_t = torch.tensor(std, dtype=torch.float64)
        scale = (1.0 / (255.0 * std_t)).float().view(1, -1, 1, 1)
        shift = (-torch.tensor(mean, dtype=torch.float64) / std_t).float().view(1, -1, 1, 1)
        self.scale: torch.Tensor
        self.shift: torch.Tensor
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.to(torch.float32) * self.scale + self.shift
        return self.network(image=x).float()


def inference_graph(network: torch.nn.Module, preprocessor: Preprocessor) -> torch.nn.Module:
    """The exportable module for ``network`` trained on ``preprocessor``'s data kind."""
    kind = preprocessor.kind
    if kind == "tabular":
        return TabularGraph(network).eval()
    if kind == "text":
        return TextGraph(network).eval()
    if kind in ("image", "segmentation", "detection"):
        mean, std = preprocessor.mean, preprocessor.std  # type: ignore[attr-defined]
        return ImageGraph(network, mean, std).eval()
    raise ValueError(f"no exportable graph for data kind '{kind}'")


def graph_inputs(kind: str, encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A batch of encoded rows as the graph's named inputs (for text: trimmed, with the mask)."""
    if kind == "text":
        return runtime_text.model_inputs(encoded)
    if kind == "tabular":
        return {"numeric": encoded["numeric"], "categorical": encoded["categorical"]}
    return {"image": encoded["image"]}
