"""Training batches streamed from a table's chunks (``data.stream``), for data larger than memory.

:class:`StreamTableBatches` is used by the Trainer exactly like
:class:`~mlsmith.data.batches.TensorBatches`. The main process decides everything random: at
the start of each epoch it draws, from its own generator, the chunk order and one shuffle seed
per DataLoader worker; workers only read, select the training rows, encode and shuffle within
their buffer with the seed they were given. The Trainer rewinds that generator to the epoch's
start state on resume and skips the steps already taken, so a resumed epoch yields the same
batches as an uninterrupted one, and two runs with one seed are identical.

Chunks are dealt to processes first (``shard``: chunk ``order[r::world]`` to rank ``r``), then
to that process's workers (``[w::workers]``). Each worker reads its chunks in turn, collects
their training rows until it holds ``shuffle_buffer`` rows, shuffles them and hands them over
in pieces; the DataLoader takes the workers' pieces in turn, an order fixed by the plan.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mlsmith.data.base import Preprocessor, Split
from mlsmith.data.batches import Batch, BatchOptions, TensorBatches
from mlsmith.data.streaming import TRAIN, SplitRule
from mlsmith.errors import DataError

if TYPE_CHECKING:
    from mlsmith.data.tables import TableChunks

# Rows as a worker hands them over: inputs by name and the target, NumPy (see _pieces).
Piece = tuple[dict[str, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TableStream:
    """Everything a worker needs to turn chunk ``i`` into encoded training rows: the file's
    chunks, where each starts, the split rule, and the fitted preprocessing (as its state, so it
    pickles into worker processes)."""

    chunks: TableChunks
    starts: tuple[int, ...]
    train_counts: tuple[int, ...]
    rule: SplitRule
    target: str
    preprocessing: type[Preprocessor]
    state: dict[str, Any]
    shuffle_buffer: int
    num_workers: int

    @property
    def rows(self) -> int:
        """Training rows in the whole file."""
        return sum(self.train_counts)

    def training_rows(
        self, chunk: int, preprocessor: Preprocessor
    ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """Chunk ``chunk``'s labelled training rows, encoded, in file order."""
        import pandas as pd

        position = self.starts[chunk]
        for frame in self.chunks.read(chunk):
            frame.index = pd.RangeIndex(position, position + len(frame))
            position += len(frame)
            labelled = frame.loc[frame[self.target].notna()]
            train = labelled.loc[self.rule.assign(labelled.index.to_numpy()) == TRAIN]
            if len(train):
                source = f"{self.chunks.path} (rows {train.index[0]}-{train.index[-1]})"
                yield (
                    preprocessor.transform(train, source),
                    preprocessor.encode_target(train, source),
                )


@dataclass
class StreamedSplit(Split):
    """The training split of a streamed table: ``inputs``/``target`` hold a seeded uniform
    sample of its rows (for the checks, the baseline and the class weights); training reads
    every row from ``stream``. ``len()`` is the sample's; ``stream.rows`` the split's."""

    stream: TableStream | None = field(default=None, kw_only=True)

    def streamed(self, options: BatchOptions) -> TensorBatches | None:
        if self.stream is None:
            return None
        return StreamTableBatches(self.stream, options)


class _Failed:
    """A chunk a worker could not read or encode; the main process raises its message."""

    def __init__(self, message: str) -> None:
        self.message = message


class TableRows(IterableDataset[Any]):
    """Worker ``w`` reads the chunks ``lanes[w]``, shuffling within its buffer with
    ``seeds[w]``; without workers the main process reads lane 0 (the only one)."""

    def __init__(
        self, stream: TableStream, lanes: list[list[int]], seeds: list[int], piece: int
    ) -> None:
        self.stream = stream
        self.lanes = lanes
        self.seeds = seeds
        self.piece = piece

    def __iter__(self) -> Iterator[Piece | _Failed]:
        info = get_worker_info()
        lane = info.id if info is not None else 0
        return _lane_pieces(self.stream, self.lanes[lane], self.seeds[lane], self.piece)


def _lane_pieces(
    stream: TableStream, chunks: list[int], seed: int, piece: int
) -> Iterator[Piece | _Failed]:
    """One worker's rows: its chunks in order, shuffled within windows of the buffer size."""
    preprocessor = stream.preprocessing.from_dict(stream.state)
    generator = np.random.default_rng(seed)
    held: list[tuple[dict[str, np.ndarray], np.ndarray]] = []
    count = 0
    try:
        for chunk in chunks:
            for inputs, target in stream.training_rows(chunk, preprocessor):
                held.append((inputs, target))
                count += len(target)
                if count >= stream.shuffle_buffer:
                    yield from _shuffled(held, generator, piece)
                    held, count = [], 0
    except DataError as error:
        yield _Failed(str(error))
        return
    yield from _shuffled(held, generator, piece)


def _shuffled(
    held: list[tuple[dict[str, np.ndarray], np.ndarray]], generator: np.random.Generator, piece: int
) -> Iterator[Piece]:
    if not held:
        return
    inputs = {k: np.concatenate([h[0][k] for h in held]) for k in held[0][0]}
    target = np.concatenate([h[1] for h in held])
    order = generator.permutation(len(target))
    for lo in range(0, len(order), piece):
        rows = order[lo : lo + piece]
        yield (
            {k: np.ascontiguousarray(v[rows]) for k, v in inputs.items()},
            np.ascontiguousarray(target[rows]),
        )


class StreamTableBatches(TensorBatches):
    """Training batches read by DataLoader workers from a table's chunks (see the module)."""

    def __init__(self, stream: TableStream, options: BatchOptions) -> None:
        # No rows held here: the workers read them.
        super().__init__({}, np.zeros(0, dtype=np.float32), options)
        self.stream = stream
        self.device = torch.device("cpu")
        self.lanes = max(1, stream.num_workers)

    def __len__(self) -> int:
        """Training rows an epoch takes: every one with one process. With several, each takes
        the same number, as many as the fewest chunks dealt to a process must hold; the
        excess of the others is left out that epoch (different rows each epoch)."""
        if self.world_size == 1:
            return self.stream.rows
        return self._per_rank() * self.world_size

    def _per_rank(self) -> int:
        counts = sorted(self.stream.train_counts)
        fewest = len(counts) // self.world_size  # chunks the least served process gets
        rows = sum(counts[:fewest])
        if rows == 0:
            raise DataError(
                f"{self.stream.chunks.path}: {len(counts)} chunks cannot give each of "
                f"{self.world_size} processes training rows; lower data.chunk_rows (or, for "
                "Parquet, write smaller row groups)"
            )
        return rows

    def to(self, device: torch.device) -> StreamTableBatches:
        self.device = torch.device(device)
        return self

    def epoch_plan(self) -> tuple[list[list[int]], list[int]]:
        """This process's chunks per worker and each worker's shuffle seed, drawn from
        ``self.generator`` (the same draws on every process)."""
        n = len(self.stream.chunks)
        order = list(range(n))
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).tolist()
        seeds = torch.randint(2**62, (self.lanes,), generator=self.generator).tolist()
        mine = order[self.rank :: self.world_size]
        return [mine[w :: self.lanes] for w in range(self.lanes)], seeds

    def steps(self, accumulate: int = 1) -> Iterator[list[Batch]]:
        plan = self.micro_batches(accumulate)
        lanes, seeds = self.epoch_plan()  # drawn even when resuming past every step
        if not plan:
            return
        rows = _Rows(self._pieces(lanes, seeds), self.stream.chunks.path)
        for pieces in plan:
            yield [self._to_device(rows.take(hi - lo)) for lo, hi in pieces]

    def _pieces(self, lanes: list[list[int]], seeds: list[int]) -> Iterator[Piece | _Failed]:
        workers = self.stream.num_workers
        # A new loader each epoch: its workers receive this epoch's plan.
        loader = DataLoader(
            TableRows(self.stream, lanes, seeds, self.batch_size),
            batch_size=None,
            # Pieces cross from the workers as pickled NumPy arrays, not tensors: a tensor
            # travels as a shared file descriptor served by a thread in the worker, which a
            # signal stopping the run caught mid-accept and printed a traceback for.
            collate_fn=_as_is,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            # The loader draws its workers' base seed from this generator, not the global RNG.
            generator=torch.Generator().manual_seed(0),
        )
        return iter(loader)

    def _to_device(self, batch: Batch) -> Batch:
        inputs, target = batch
        moved = {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}
        return moved, target.to(self.device, non_blocking=True)


def _as_is(piece: Any) -> Any:
    """The DataLoader's collate: the worker's piece unchanged (NumPy, see ``_pieces``)."""
    return piece


class _Rows:
    """Cuts the workers' pieces into micro-batches of exactly the sizes the step plan asks."""

    def __init__(self, pieces: Iterator[Piece | _Failed], path: str) -> None:
        self.pieces = pieces
        self.path = path
        self.held: list[Batch] = []
        self.count = 0

    def take(self, n: int) -> Batch:
        while self.count < n:
            piece = next(self.pieces, None)
            if piece is None:
                raise DataError(
                    f"{self.path}: the file holds fewer training rows than when the run "
                    "started; it changed while training"
                )
            if isinstance(piece, _Failed):
                raise DataError(piece.message)
            arrays, labels = piece
            self.held.append(
                ({k: torch.from_numpy(v) for k, v in arrays.items()}, torch.from_numpy(labels))
            )
            self.count += len(labels)
        keys = self.held[0][0].keys()
        inputs = {k: torch.cat([p[0][k] for p in self.held]) for k in keys}
        target = torch.cat([p[1] for p in self.held])
        self.count -= n
        self.held = [({k: v[n:] for k, v in inputs.items()}, target[n:])] if self.count else []
        return {k: v[:n] for k, v in inputs.items()}, target[:n]
