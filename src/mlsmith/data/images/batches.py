"""Batching images: :class:`ImageBatches` slices an in-memory uint8 cache, :class:`StreamBatches`
decodes per sample in DataLoader workers for data that does not fit.

Both draw the epoch's order and one augmentation seed per training sample from their own
generator, in the same sequence, so they produce the same batches for the same seed, and the
Trainer can checkpoint and rewind that generator for an exact resume, even mid-epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from mlsmith.data.batches import Batch, BatchOptions, TensorBatches
from mlsmith.data.images.augment import Augment, Normalize, augment_samples, draw_seeds
from mlsmith.data.images.decode import decode_file, fit_image, parallel_map
from mlsmith.errors import DataError


class ImageBatches(TensorBatches):
    """Batches sliced from a uint8 tensor (N, C, H, W); augmentation and normalisation in
    :meth:`collate`, one batch at a time."""

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        target: np.ndarray | None,
        options: BatchOptions,
        *,
        normalize: Normalize,
        augment: Augment | None = None,
    ) -> None:
        super().__init__(inputs, target, options)
        self.normalize = normalize
        self.augment = augment
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> ImageBatches:
        """Without augmentation the cache moves to ``device`` once. With it, the cache stays on
        the CPU, where per-sample transforms are cheap, and each finished batch moves."""
        self.device = torch.device(device)
        if self.augment is None or self.device.type == "cpu":
            super().to(self.device)
        return self

    def collate(self, inputs: dict[str, torch.Tensor], target: torch.Tensor) -> Batch:
        images = inputs["image"]
        if self.augment is not None:
            images = augment_samples(images, draw_seeds(self.generator, len(images)), self.augment)
        images = images.to(self.device, non_blocking=True)
        target = target.to(self.device, non_blocking=True)
        return {"image": self.normalize(images)}, target


class _Failed:
    """A sample a worker could not load; the main process raises its message as a DataError."""

    def __init__(self, message: str) -> None:
        self.message = message


class ImageDataset:
    """Map-style dataset for a DataLoader: key (index, seed) -> (uint8 (C, H, W), index)."""

    def __init__(
        self,
        source: np.ndarray,
        channels: int,
        size: tuple[int, int],
        augment: Augment | None,
    ) -> None:
        # Paths (object array of str) or stored pixels (uint8 (N, c, h, w)).
        self.source = source
        self.channels = channels
        self.size = size
        self.augment = augment

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor | _Failed, int]:
        index, seed = key
        try:
            if self.source.dtype == object:
                image = decode_file(str(self.source[index]), self.channels, self.size)
            else:
                stored = torch.from_numpy(self.source[index])
                image = fit_image(stored, self.channels, self.size)
        except DataError as error:
            return _Failed(str(error)), index
        if self.augment is not None:
            image = augment_samples(image[None], torch.tensor([seed]), self.augment)[0]
        return image, index


def _collate_samples(
    items: list[tuple[torch.Tensor | _Failed, int]],
) -> tuple[torch.Tensor | _Failed, torch.Tensor]:
    for image, _ in items:
        if isinstance(image, _Failed):
            return image, torch.empty(0, dtype=torch.int64)
    images = [image for image, _ in items if isinstance(image, torch.Tensor)]
    return torch.stack(images), torch.tensor([index for _, index in items], dtype=torch.int64)


def load_images(
    source: np.ndarray, indices: list[int], channels: int, size: tuple[int, int]
) -> torch.Tensor:
    """uint8 (len(indices), C, H, W): the images at ``indices`` of ``source`` (paths or stored
    pixels) as the workers load them, without augmentation, in threads."""
    dataset = ImageDataset(source, channels, size, augment=None)
    loaded = parallel_map(lambda i: dataset[(int(i), 0)][0], indices)
    failed = next((item for item in loaded if isinstance(item, _Failed)), None)
    if failed is not None:
        raise DataError(failed.message)
    return torch.stack([item for item in loaded if isinstance(item, torch.Tensor)])


class _Plan:
    """The DataLoader's batch sampler: this epoch's batches of (index, seed), set per epoch."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamBatches(TensorBatches):
    """Batches decoded per sample by DataLoader workers, for images that are not cached.

    Used by the Trainer exactly like :class:`TensorBatches`. The order and the per-sample seeds
    are drawn from ``generator`` in the main process in the same sequence ImageBatches draws
    them, so both produce the same batches, and resuming mid-epoch is exact here too. Workers
    only decode and augment; the main process normalises on the training device.
    """

    def __init__(
        self,
        source: np.ndarray,
        target: np.ndarray | None,
        options: BatchOptions,
        *,
        channels: int,
        size: tuple[int, int],
        normalize: Normalize,
        augment: Augment | None = None,
        num_workers: int = 2,
    ) -> None:
        # No inputs held here: the workers read them from ``source``.
        labels = np.zeros(len(source), dtype=np.float32) if target is None else target
        super().__init__({}, labels, options)
        self.dataset = ImageDataset(source, channels, size, augment)
        self.normalize = normalize
        self.augment = augment
        self.num_workers = num_workers
        self.device = torch.device("cpu")
        self._plan = _Plan()
        self._loader: Any = None

    def to(self, device: torch.device) -> StreamBatches:
        self.device = torch.device(device)
        return self

    def loader(self) -> Any:
        if self._loader is None:
            from torch.utils.data import DataLoader

            workers = self.num_workers
            self._loader = DataLoader(
                self.dataset,  # type: ignore[arg-type]
                batch_sampler=self._plan,
                num_workers=workers,
                collate_fn=_collate_samples,
                pin_memory=torch.cuda.is_available(),
                persistent_workers=workers > 0,
                prefetch_factor=4 if workers > 0 else None,
                # The loader draws its workers' base seed from this generator, not the global RNG.
                generator=torch.Generator().manual_seed(0),
            )
        return self._loader

    def steps(self, accumulate: int = 1) -> Iterator[list[Batch]]:
        n = len(self.target)
        steps = self.micro_batches(accumulate)
        order = self.permutation(n) if self.shuffle else torch.arange(n)
        plan: list[list[tuple[int, int]]] = []
        for pieces in steps:
            for lo, hi in pieces:
                indices = order[lo:hi].tolist()
                if self.augment is not None:
                    seeds = draw_seeds(self.generator, len(indices)).tolist()
                else:
                    seeds = [0] * len(indices)
                plan.append(list(zip(indices, seeds, strict=True)))
        self._plan.batches = plan
        if not plan:
            return
        batches = iter(self.loader())
        for pieces in steps:
            yield [self._receive(next(batches)) for _ in pieces]

    def _receive(self, batch: tuple[torch.Tensor | _Failed, torch.Tensor]) -> Batch:
        images, indices = batch
        if isinstance(images, _Failed):
            raise DataError(images.message)
        images = images.to(self.device, non_blocking=True)
        target = self.target[indices].to(self.device, non_blocking=True)
        return {"image": self.normalize(images)}, target
