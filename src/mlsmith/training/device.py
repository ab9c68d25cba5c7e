"""Which device to train on."""

from __future__ import annotations

import torch

from mlsmith.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """'auto' picks the GPU when one is present, else the CPU; asking for a missing one fails."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: '{name}' asked for, but no CUDA GPU is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device: '{name}' asked for, but MPS is not available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"train.device: '{name}' asked for, but only {torch.cuda.device_count()} GPU(s)"
        )
    return device
