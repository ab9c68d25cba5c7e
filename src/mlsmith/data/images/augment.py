"""Per-batch pixel transforms: normalisation, and the training augmentation with per-sample seeds.

Augmentation (``torchvision.transforms.v2`` on uint8 (C, H, W)) runs under one seed per sample,
drawn from the batches' own generator: a sample's augmentation depends on its seed only, the
same in memory or in a DataLoader worker, and a resumed run replays it exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mlsmith.config import AugmentConfig

# Seeds for per-sample augmentation are drawn in [0, 2**62).
SEED_BOUND = 2**62


class Normalize:
    """uint8 images to float32 ``(x / 255 - mean) / std``, as one multiply-add per batch."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        std_t = torch.tensor(std, dtype=torch.float64)
        self.scale = (1.0 / (255.0 * std_t)).float().view(1, -1, 1, 1)
        self.shift = (-torch.tensor(mean, dtype=torch.float64) / std_t).float().view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.scale.device != images.device:
            self.scale, self.shift = self.scale.to(images.device), self.shift.to(images.device)
        return images.to(torch.float32).mul_(self.scale).add_(self.shift)


Augment = Callable[[torch.Tensor], torch.Tensor]


def build_augment(cfg: AugmentConfig, size: tuple[int, int], channels: int) -> Augment | None:
    """The training augmentation as a torchvision.transforms.v2 pipeline on uint8 (C, H, W)."""
    if not cfg.enabled:
        return None
    from torchvision.transforms import v2

    ops: list[Any] = []
    if cfg.crop_scale:
        ops.append(v2.RandomResizedCrop(list(size), scale=cfg.crop_scale, antialias=True))
    if cfg.hflip:
        ops.append(v2.RandomHorizontalFlip())
    if cfg.rotation or cfg.translate:
        shift = (cfg.translate, cfg.translate) if cfg.translate else None
        ops.append(v2.RandomAffine(degrees=cfg.rotation, translate=shift))
    if cfg.color_jitter:
        jitter = cfg.color_jitter
        saturation = jitter if channels == 3 else None
        ops.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=saturation))
    if cfg.randaugment:
        ops.append(v2.RandAugment(num_ops=2, magnitude=9))
    compose: Augment = v2.Compose(ops)
    return compose


def draw_seeds(generator: torch.Generator, n: int) -> torch.Tensor:
    """One augmentation seed per sample, from the batches' generator."""
    return torch.randint(0, SEED_BOUND, (n,), generator=generator)


def augment_samples(images: torch.Tensor, seeds: torch.Tensor, augment: Augment) -> torch.Tensor:
    """Augment each image of (B, C, H, W) under its own seed; the global RNG is left as it was.

    Seeding per sample makes a sample's augmentation depend on its seed only: the same in
    memory or in a DataLoader worker, whatever the batch it lands in.
    """
    out = torch.empty_like(images)
    threads = torch.get_num_threads()
    # One image is far too small to split across threads: on 2 CPUs this alone is 3-4x faster
    # (and a single thread makes every reduction, e.g. ColorJitter's mean, the same everywhere).
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            for i, seed in enumerate(seeds.tolist()):
                torch.default_generator.manual_seed(seed)
                out[i] = augment(images[i])
    finally:
        torch.set_num_threads(threads)
    return out
