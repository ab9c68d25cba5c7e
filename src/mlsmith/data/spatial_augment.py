"""Augmentation that moves the targets with the pixels: boxes for detection, masks for
segmentation (``torchvision.transforms.v2`` with ``tv_tensors``).

The ops: a horizontal flip, scale jitter (the image resized by a random factor: detection
models take any size), a random crop that keeps boxes valid (detection: SSD's IoU crop, then
boxes left without area dropped with their labels; segmentation: a crop of a fixed fraction,
padded with the ignore index), and colour jitter (pixels only). Masks are resampled with
nearest-neighbour so class ids stay class ids.

As for classification (:mod:`mlsmith.data.images.augment`), each sample is augmented under its
own seed, so a sample's augmentation depends on its seed only and a resumed run replays it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mlsmith.data.annotations import IGNORE_INDEX


@dataclass(frozen=True)
class SpatialAugment:
    """The options (see the module); all off by default."""

    hflip: bool = False
    scale_jitter: tuple[float, float] | None = None
    crop: bool = False
    color_jitter: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.hflip or self.scale_jitter is not None or self.crop or self.color_jitter > 0


@dataclass
class Targets:
    """One image and what is to be found in it: boxes with labels, or a mask, or both."""

    image: torch.Tensor  # uint8 (C, H, W)
    boxes: torch.Tensor | None = None  # float32 (N, 4) x_min, y_min, x_max, y_max
    labels: torch.Tensor | None = None  # int64 (N,)
    mask: torch.Tensor | None = None  # uint8 (H, W) class ids


Transform = Callable[[dict[str, Any]], dict[str, Any]]


def build_transform(options: SpatialAugment, *, boxes: bool) -> Transform | None:
    """The v2 pipeline for ``options``; ``boxes``: detection (IoU crop, sanitised boxes) rather
    than segmentation (a crop of 3/4 of each side)."""
    if not options.enabled:
        return None
    from torchvision.transforms import v2

    ops: list[Any] = []
    if options.color_jitter:
        jitter = options.color_jitter
        ops.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    if options.hflip:
        ops.append(v2.RandomHorizontalFlip())
    if options.scale_jitter is not None:
        ops.append(_ScaleJitter(options.scale_jitter))
    if options.crop:
        ops.append(v2.RandomIoUCrop() if boxes else _FractionCrop(0.75))
    if boxes:
        # Boxes a crop cut down to nothing go, with their labels.
        ops.append(v2.ClampBoundingBoxes())
        ops.append(v2.SanitizeBoundingBoxes(min_size=1.0))
    compose: Transform = v2.Compose(ops)
    return compose


def augment(sample: Targets, transform: Transform, seed: int) -> Targets:
    """``sample`` through ``transform`` under ``seed``; the global RNG is left as it was."""
    from torchvision import tv_tensors

    height, width = sample.image.shape[-2:]
    inputs: dict[str, Any] = {"image": tv_tensors.Image(sample.image)}
    if sample.boxes is not None:
        inputs["boxes"] = tv_tensors.BoundingBoxes(
            sample.boxes, format="XYXY", canvas_size=(height, width)
        )
        inputs["labels"] = sample.labels
    if sample.mask is not None:
        inputs["mask"] = tv_tensors.Mask(sample.mask)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = transform(inputs)
    return Targets(
        image=out["image"].as_subclass(torch.Tensor),
        boxes=out["boxes"].as_subclass(torch.Tensor) if "boxes" in out else None,
        labels=out.get("labels"),
        mask=out["mask"].as_subclass(torch.Tensor) if "mask" in out else None,
    )


class _ScaleJitter:
    """Resize by a factor drawn uniformly from ``scale`` (the aspect ratio kept)."""

    def __init__(self, scale: tuple[float, float]) -> None:
        self.scale = scale

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        from torchvision.transforms import v2

        height, width = inputs["image"].shape[-2:]
        factor = float(torch.empty(()).uniform_(*self.scale))
        size = [max(1, round(height * factor)), max(1, round(width * factor))]
        resized: dict[str, Any] = v2.Resize(size, antialias=True)(inputs)
        return resized


class _FractionCrop:
    """A random crop of ``fraction`` of each side; masks are padded with the ignore index."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        height, width = inputs["image"].shape[-2:]
        size = [max(1, int(height * self.fraction)), max(1, int(width * self.fraction))]
        fill = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}
        cropped: dict[str, Any] = v2.RandomCrop(size, pad_if_needed=True, fill=fill)(inputs)
        return cropped


def box_bounds(mask: np.ndarray, instance: int) -> tuple[float, float, float, float] | None:
    """The tight box around ``mask == instance`` in pixel-edge coordinates, or None."""
    rows, cols = np.nonzero(mask == instance)
    if not len(rows):
        return None
    return float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)
