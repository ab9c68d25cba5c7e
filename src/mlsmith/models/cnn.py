"""A small, fast CNN for small images (MNIST-sized up to ~64 px): plain torch, no torchvision.

Blocks of ``depth`` conv3x3-BN-ReLU layers, each block ending in a 2x2 max-pool that halves the
resolution; then global average pooling, dropout and a linear head. Global pooling makes it work
at any input size, and channels-last (``model.channels_last``) speeds up its convolutions on
CPUs and tensor-core GPUs.
"""

from __future__ import annotations

import torch
from torch import nn

from mlsmith.config import CNNConfig
from mlsmith.models.neural import NeuralModel


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int, n_outputs: int, cfg: CNNConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for block_width in cfg.channels:
            for _ in range(cfg.depth):
                layers += [
                    nn.Conv2d(width, block_width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(block_width),
                    nn.ReLU(inplace=True),
                ]
                width = block_width
            # ceil_mode: an odd (or 1-pixel) side still halves instead of vanishing.
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(width, n_outputs)
        self.channels_last = cfg.channels_last
        self._init()
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def _init(self) -> None:
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # A near-zero head starts every class at the same logit: the first loss is ln(C).
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # image: (B, C, H, W) float, normalised
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        x = self.pool(self.features(image)).flatten(1)  # (B, last width)
        return self.head(self.dropout(x))  # (B, n_outputs)


class CNNModel(NeuralModel):
    family = "cnn"

    def build_network(self) -> nn.Module:
        cfg = self.config.model
        if not isinstance(cfg, CNNConfig):  # mlsmith.families routes by model.type
            raise TypeError(f"CNNModel got a model section of type '{cfg.type}'")
        spec = self.preprocessor.model_inputs()
        return SmallCNN(spec["channels"], self.task.n_outputs, cfg)
