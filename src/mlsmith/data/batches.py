"""Batches from in-memory tensors: one gather per epoch, then free contiguous slices.

A per-sample ``Dataset`` + ``DataLoader`` costs a Python call and a collate per row; when the
data fits in memory, permuting the whole tensor once per epoch and slicing views is as fast as
batching gets. The shuffle comes from this object's own seeded generator, whose state is saved
in checkpoints so a resumed run sees the same batches in the same order. The balanced sampler
(``train.sampler: balanced``) draws its rows with replacement from that same generator, so it
resumes exactly too.

:class:`BatchOptions` says how to batch (size, shuffle, seed, drop_last, augmentation); every
data kind's batches take one, built for training or evaluation from the ``train`` config.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from mlsmith.config import TrainConfig
    from mlsmith.data.base import Preprocessor, Split

Batch = tuple[dict[str, "torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class BatchOptions:
    """How to batch a split: the size, the seeded order, and whether augmentation is on.

    ``seed`` seeds the batches' own generator (order and per-sample augmentation seeds), so the
    same options give the same batches in every process. ``train`` turns on the data kind's
    training-only transforms (image augmentation); kinds without any ignore it.
    """

    batch_size: int
    shuffle: bool = False
    seed: int = 0
    drop_last: bool = False
    train: bool = False
    # Draw each epoch's rows with replacement, every class equally often (needs shuffle).
    balanced: bool = False

    @classmethod
    def training(cls, cfg: TrainConfig, seed: int) -> BatchOptions:
        """The Trainer's training batches: shuffled from ``seed`` (or drawn class-balanced),
        augmented, ``drop_last`` as configured."""
        return cls(
            cfg.batch_size,
            shuffle=True,
            seed=seed,
            drop_last=cfg.drop_last,
            train=True,
            balanced=cfg.sampler == "balanced",
        )

    @classmethod
    def evaluation(cls, cfg: TrainConfig) -> BatchOptions:
        """Validation and prediction batches: in table order, ``eval_batch_size`` rows each."""
        return cls(cfg.eval_batch_size)


class TensorBatches:
    """Mini-batches over arrays held as tensors (on the CPU or the training device).

    Without a target (prediction) the batches carry an empty placeholder target.
    """

    def __init__(
        self, inputs: dict[str, np.ndarray], target: np.ndarray | None, options: BatchOptions
    ) -> None:
        import torch

        self.inputs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
        if target is None:
            target = np.zeros(len(next(iter(inputs.values()))), dtype=np.float32)
        self.target = torch.from_numpy(np.ascontiguousarray(target))
        self.batch_size = options.batch_size
        self.shuffle = options.shuffle
        self.drop_last = options.drop_last
        self.generator = torch.Generator().manual_seed(options.seed)
        self.sampler = BalancedSampler(target) if options.balanced and options.shuffle else None
        # This process's place among the training processes: its share of every step.
        self.rank, self.world_size = 0, 1
        # Training batches skip a last step too small to share (see step_plan); evaluation
        # batches keep every row, a rank's share of a small last batch possibly empty.
        self.training = options.train

    def shard(self, rank: int, world_size: int) -> TensorBatches:
        """Take only rank ``rank``'s share of every optimizer step from now on.

        Every rank draws the same epoch order from the same generator; step k's samples
        ``[k*B*A*W, (k+1)*B*A*W)`` are split into ``W`` contiguous shares, so W processes of
        batch B see together exactly what one process of batch B*W would (see
        :meth:`step_plan`).
        """
        self.rank, self.world_size = rank, world_size
        return self

    @classmethod
    def from_split(cls, split: Split, options: BatchOptions) -> TensorBatches:
        """Batches over a split's inputs and targets."""
        return cls(split.inputs, split.target, options)

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
        if self.shuffle:
            order = self.permutation(n).to(self.target.device)
            inputs = {k: v[order] for k, v in self.inputs.items()}
            target = self.target[order]
        else:
            inputs, target = self.inputs, self.target
        for pieces in self.micro_batches(accumulate):
            yield [
                self.collate({k: v[lo:hi] for k, v in inputs.items()}, target[lo:hi])
                for lo, hi in pieces
            ]

    def step_plan(self, accumulate: int = 1) -> list[tuple[int, int]]:
        """This rank's ``[start, stop)`` positions in the epoch's order, one per optimizer step.

        A step covers ``B*A*W`` samples (the global batch); this rank takes its contiguous
        share of each. With several processes, a last training step too small to give every
        rank a sample is left out (every rank must take part in every step's gradient
        averaging); evaluation keeps it.
        """
        n = len(self)
        world = self.world_size
        per_step = self.batch_size * accumulate * world
        usable = n - n % per_step if self.drop_last else n
        plan = []
        for start in range(0, usable, per_step):
            stop = min(start + per_step, usable)
            if stop - start < world and self.training:
                break
            lo = start + self.rank * (stop - start) // world
            plan.append((lo, start + (self.rank + 1) * (stop - start) // world))
        return plan

    def micro_batches(self, accumulate: int = 1) -> list[list[tuple[int, int]]]:
        """Each optimizer step's micro-batches, as ``[start, stop)`` positions in the epoch's
        order: this rank's share of the step cut into batches of ``batch_size``.

        With several processes every rank cuts every step into the same number of
        micro-batches (a partial last step into near-equal ones), because each forward pass
        may be collective: FSDP gathers weights and synchronised batch norm averages
        statistics in every one, so a rank with an extra micro-batch would wait forever.
        """
        size, world = self.batch_size, self.world_size
        steps = []
        for index, (start, stop) in enumerate(self.step_plan(accumulate)):
            if world == 1:
                steps.append([(i, min(i + size, stop)) for i in range(start, stop, size)])
                continue
            # Full steps: accumulate pieces of batch_size on every rank, as with one process.
            fewest = self.step_total(accumulate, index) // world  # the smallest share
            count = max(1, -(-fewest // size))
            share = stop - start
            edges = [start + share * j // count for j in range(count + 1)]
            steps.append(list(itertools.pairwise(edges)))
        return steps

    def step_total(self, accumulate: int, step: int) -> int:
        """Samples in optimizer step ``step`` over every rank (the global batch, or less)."""
        n = len(self)
        per_step = self.batch_size * accumulate * self.world_size
        usable = n - n % per_step if self.drop_last else n
        return min(per_step, usable - step * per_step)

    def permutation(self, n: int) -> torch.Tensor:
        """This epoch's ``n`` sample indices: a shuffle of every row, or with the balanced
        sampler a class-balanced draw with replacement; then passed through :meth:`arrange`.

        Draws only from ``self.generator``, so the order is reproducible and resumable.
        """
        import torch

        if self.sampler is not None:
            return self.arrange(self.sampler.draw(n, self.generator))
        return self.arrange(torch.randperm(n, generator=self.generator))

    def arrange(self, order: torch.Tensor) -> torch.Tensor:
        """Reorder an epoch's drawn indices; subclasses may group similar samples (e.g. by
        length). Any randomness must come from ``self.generator``."""
        return order

    def collate(self, inputs: dict[str, torch.Tensor], target: torch.Tensor) -> Batch:
        """Turn a slice of the stored tensors into the model's batch (default: as is).

        Subclasses decode, augment, normalise or trim padding here, one batch at a time.
        """
        return inputs, target

    def n_steps(self, accumulate: int = 1) -> int:
        """Optimizer steps per epoch for ``steps(accumulate)``."""
        return len(self.step_plan(accumulate))

    def __iter__(self) -> Iterator[Batch]:
        """Every micro-batch of one epoch, in order (for evaluation)."""
        for step in self.steps(1):
            yield from step


class QueryBatches(TensorBatches):
    """A ranking's batches: each row's target is ``[relevance, query]``, and a training epoch
    shuffles whole queries, each query's rows kept together, so a listwise loss sees whole
    lists. Batches are still ``batch_size`` rows (the step count stays fixed, as schedulers and
    resume need); a query a batch boundary cuts counts as two shorter lists. Evaluation keeps the
    table order (prepared ranking splits are sorted by query).
    """

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        target: np.ndarray,
        queries: np.ndarray,
        options: BatchOptions,
    ) -> None:
        import torch

        codes = np.unique(np.asarray(queries), return_inverse=True)[1].reshape(-1)
        # float32 holds every code exactly below 2**24 queries; beyond, two queries could share
        # a code, and their items would be compared as one list.
        stacked = np.stack([target.astype(np.float32), codes.astype(np.float32)], axis=1)
        super().__init__(inputs, stacked, replace(options, balanced=False))
        self.codes = torch.from_numpy(codes.astype(np.int64))
        self.n_queries = int(codes.max()) + 1 if len(codes) else 0

    def permutation(self, n: int) -> torch.Tensor:
        """The queries in a random order (from ``self.generator``), each one's rows together
        and in table order."""
        import torch

        place = torch.empty(self.n_queries, dtype=torch.int64)
        place[torch.randperm(self.n_queries, generator=self.generator)] = torch.arange(
            self.n_queries
        )
        # Sort by the query's place, then by row: one stable key.
        return torch.argsort(place[self.codes] * n + torch.arange(n))


def split_batches(preprocessor: Preprocessor, split: Split, options: BatchOptions) -> TensorBatches:
    """The batches of ``split`` a network trains or validates on: the data kind's own, or
    :class:`QueryBatches` for a ranking (a split with query ids)."""
    streamed = split.streamed(options)
    if streamed is not None:  # data.stream: read from the file's chunks, not from memory
        return streamed
    if split.groups is not None:
        return QueryBatches(split.inputs, split.target, split.groups, options)
    return preprocessor.batches(split.inputs, split.target, options)


class BalancedSampler:
    """Class-balanced draws with replacement: each draw picks a class uniformly among those with
    training rows, then a row of that class uniformly.

    Two integer draws per sample from the caller's generator (no ``torch.multinomial``, whose
    category count is capped at 2**24 rows), so an epoch's draw is as reproducible and resumable
    as a shuffle. Each class is then drawn about ``n / classes`` times an epoch, minority rows
    repeated and majority rows left out, for the same ``n`` samples per epoch.
    """

    def __init__(self, target: np.ndarray | None) -> None:
        import torch

        if target is None:
            raise ValueError("the balanced sampler needs the training target")
        classes = np.asarray(target).astype(np.int64)
        counts = np.bincount(classes)
        present = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        # Row indices grouped by class: class present[j]'s rows are
        # by_class[starts[j] : starts[j] + counts[j]].
        self.by_class = torch.from_numpy(np.argsort(classes, kind="stable"))
        self.starts = torch.from_numpy(starts[present])
        self.counts = torch.from_numpy(counts[present])

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` row indices (int64, on the CPU)."""
        import torch

        which = torch.randint(len(self.counts), (n,), generator=generator)
        # Modulo of a 62-bit draw: its bias toward low offsets is below 2**-30 for any table.
        offset = torch.randint(2**62, (n,), generator=generator) % self.counts[which]
        return self.by_class[self.starts[which] + offset]
