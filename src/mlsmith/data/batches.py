"""Batches from in-memory tensors: one gather per epoch, then free contiguous slices.

A per-sample ``Dataset`` + ``DataLoader`` costs a Python call and a collate per row; when the
data fits in memory, permuting the whole tensor once per epoch and slicing views is as fast as
batching gets. The shuffle comes from this object's own seeded generator, whose state is saved
in checkpoints so a resumed run sees the same batches in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from mlsmith.data.base import Split

Batch = tuple[dict[str, "torch.Tensor"], "torch.Tensor"]


class TensorBatches:
    """Mini-batches over arrays held as tensors (on the CPU or the training device).

    Without a target (prediction) the batches carry an empty placeholder target.
    """

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        target: np.ndarray | None,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        import torch

        n = len(next(iter(inputs.values())))
        self.inputs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
        labels = np.zeros(n, dtype=np.float32) if target is None else target
        self.target = torch.from_numpy(np.ascontiguousarray(labels))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_split(cls, split: Split, batch_size: int, **options: object) -> TensorBatches:
        return cls(split.inputs, split.target, batch_size, **options)  # type: ignore[arg-type]

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.target)

    def to(self, device: torch.device) -> TensorBatches:
        """Move the tensors to ``device`` once, so batches need no host-to-device copy."""
        self.inputs = {k: v.to(device) for k, v in self.inputs.items()}
        self.target = self.target.to(device)
        return self

    def steps(self, accumulate: int = 1) -> Iterator[list[Batch]]:
        """One epoch as optimizer steps, each a list of up to ``accumulate`` micro-batches.

        Step k covers samples [k*B*A, (k+1)*B*A) of the epoch's order, so accumulating A
        micro-batches of B visits exactly the samples one batch of B*A would, partial last
        step included (or dropped with ``drop_last``).
        """

        n = len(self.target)
        per_step = self.batch_size * accumulate
        usable = n - n % per_step if self.drop_last else n
        if self.shuffle:
            order = self.permutation(n).to(self.target.device)
            inputs = {k: v[order] for k, v in self.inputs.items()}
            target = self.target[order]
        else:
            inputs, target = self.inputs, self.target
        for start in range(0, usable, per_step):
            stop = min(start + per_step, usable)
            size = self.batch_size
            yield [
                self.collate({k: v[i : i + size] for k, v in inputs.items()}, target[i : i + size])
                for i in range(start, stop, size)
            ]

    def permutation(self, n: int) -> torch.Tensor:
        """This epoch's sample order; subclasses may group similar samples (e.g. by length).

        Draws only from ``self.generator``, so the order is reproducible and resumable.
        """
        import torch

        return torch.randperm(n, generator=self.generator)

    def collate(self, inputs: dict[str, torch.Tensor], target: torch.Tensor) -> Batch:
        """Turn a slice of the stored tensors into the model's batch (default: as is).

        Subclasses decode, augment, normalise or trim padding here, one batch at a time.
        """
        return inputs, target

    def n_steps(self, accumulate: int = 1) -> int:
        """Optimizer steps per epoch for ``steps(accumulate)``."""
        per_step = self.batch_size * accumulate
        n = len(self.target)
        return n // per_step if self.drop_last else -(-n // per_step)

    def __iter__(self) -> Iterator[Batch]:
        """Every micro-batch of one epoch, in order (for evaluation)."""
        for step in self.steps(1):
            yield from step
