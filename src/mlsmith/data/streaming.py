"""One pass over a table too large for memory (``data.stream``): which split each row is in,
and the statistics the preprocessing is fitted from.

A row's split is a seeded hash of its position in the file, so any chunk is split on its own,
in any process, without seeing the others, and the same seed always picks the same rows.
:func:`stream_pass` reads the chunks once, in file order, and keeps only running totals (count,
mean and sum of squared deviations per numeric column, category vocabularies, distinct labels)
and three bounded samples: training rows for the medians and the checks, and the validation
and test rows. Samples are "bottom-k": the rows with the smallest seeded keys, i.e. a uniform
sample without replacement that does not depend on the chunk size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.runtime.tabular import category_keys, numeric_matrix
from mlsmith.tasks import label_key

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.data.tables import TableChunks

TRAIN, VAL, TEST = 0, 1, 2
# Salts so the split and the sample draw independent hashes from one seed.
SPLIT_SALT, SAMPLE_SALT = 1, 2
# More distinct labels than this are not classes: the target is a quantity (or an identifier).
MAX_LABELS = 100_000
_MASK = 2**64 - 1


def row_hash(rows: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """A uniform float in [0, 1) for each row position: splitmix64 of (seed, salt, position)."""
    offset = np.uint64((seed * 0x9E3779B97F4A7C15 + salt * 0xD1B54A32D192ED03) & _MASK)
    # uint64 arithmetic wraps around, as the hash intends.
    z = rows.astype(np.uint64) + offset + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass(frozen=True)
class SplitRule:
    """Which split a row is in, from its position alone: hash < test is test, < test + val is
    validation, the rest training (``val``/``test`` are 0 where a fixed file replaces them)."""

    seed: int
    val: float
    test: float

    def assign(self, rows: np.ndarray) -> np.ndarray:
        """TRAIN, VAL or TEST (int8) for each row position."""
        u = row_hash(rows, self.seed, SPLIT_SALT)
        return np.where(u < self.test, TEST, np.where(u < self.test + self.val, VAL, TRAIN)).astype(
            np.int8
        )

    def sample_keys(self, rows: np.ndarray) -> np.ndarray:
        """Each row's key for the bottom-k samples, independent of its split's hash."""
        return row_hash(rows, self.seed, SAMPLE_SALT)


class Moments:
    """Count, mean and sum of squared deviations of each column's present (non-NaN) values,
    merged chunk by chunk (Chan et al.'s parallel update, stable where sums of squares are not).
    """

    def __init__(self, width: int) -> None:
        self.n = np.zeros(width)
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)

    def add(self, values: np.ndarray) -> None:
        """Fold in a (rows, width) float64 block; NaN is a missing value."""
        present = ~np.isnan(values)
        n_b = present.sum(axis=0).astype(np.float64)
        mean_b = np.where(present, values, 0.0).sum(axis=0) / np.maximum(n_b, 1.0)
        m2_b = (np.where(present, values - mean_b, 0.0) ** 2).sum(axis=0)
        self.mean, self.m2, self.n = _merge(self.n, self.mean, self.m2, n_b, mean_b, m2_b)

    def filled(self, total: int, fill: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation over ``total`` rows once each missing value is replaced
        by ``fill`` (as the in-memory fit computes them); a constant column's deviation is 1."""
        missing = np.maximum(total - self.n, 0.0)
        mean, m2, n = _merge(self.n, self.mean, self.m2, missing, fill, np.zeros_like(fill))
        std = np.sqrt(m2 / np.maximum(n, 1.0))
        return mean, np.where(std > 1e-12, std, 1.0)


def _merge(
    n_a: np.ndarray,
    mean_a: np.ndarray,
    m2_a: np.ndarray,
    n_b: np.ndarray,
    mean_b: np.ndarray,
    m2_b: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = n_a + n_b
    safe = np.maximum(n, 1.0)
    delta = mean_b - mean_a
    mean = np.where(n > 0, mean_a + delta * n_b / safe, 0.0)
    m2 = m2_a + m2_b + delta**2 * n_a * n_b / safe
    return mean, m2, n


class Sample:
    """The ``limit`` rows with the smallest keys seen so far (None: every row), in file order."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.frames: list[pd.DataFrame] = []
        self.keys: list[np.ndarray] = []
        self.held = 0

    def add(self, frame: pd.DataFrame, keys: np.ndarray) -> None:
        """Offer ``frame``'s rows with their keys."""
        if not len(frame):
            return
        self.frames.append(frame)
        self.keys.append(keys)
        self.held += len(frame)
        if self.limit is not None and self.held > 2 * self.limit:
            self._trim()  # amortised: trimmed once it doubles

    def rows(self) -> pd.DataFrame | None:
        """The sample in file order (its index: the rows' positions); None when empty."""
        import pandas as pd

        self._trim()
        return pd.concat(self.frames).sort_index() if self.frames else None

    def _trim(self) -> None:
        import pandas as pd

        if not self.frames or self.limit is None or self.held <= self.limit:
            return
        frame, keys = pd.concat(self.frames), np.concatenate(self.keys)
        keep = np.argpartition(keys, self.limit)[: self.limit]
        self.frames, self.keys, self.held = [frame.iloc[keep]], [keys[keep]], self.limit


class Labels:
    """The distinct labels of a target (one per label key, as the tasks tell them apart)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.overflow = False

    def add(self, target: pd.Series) -> None:
        """Note the labels of ``target`` (missing values already dropped)."""
        if self.overflow:
            return
        for value in target.unique().tolist():
            self.values.setdefault(label_key(value), value)
        self.overflow = len(self.values) > MAX_LABELS

    def series(self, name: str) -> pd.Series:
        """One value per distinct label, enough to infer the task and list the classes."""
        import pandas as pd

        return pd.Series(list(self.values.values()), name=name)


@dataclass
class PassResult:
    """What one pass over a table's chunks found (see :func:`stream_pass`)."""

    starts: list[int]  # the position of each chunk's first row in the file
    train_counts: list[int]  # labelled training rows in each chunk
    rows: int  # rows read, labelled or not
    unlabelled: int  # rows without a target, left out of every split
    numeric: Moments
    vocabularies: list[set[str]]
    target: Moments  # the training target as numbers (for a regression's scale)
    labels: Labels  # the labels of every labelled row
    fingerprint: str
    samples: dict[str, pd.DataFrame | None] = field(default_factory=dict)

    @property
    def train_rows(self) -> int:
        return sum(self.train_counts)


def stream_pass(
    chunks: TableChunks,
    rule: SplitRule,
    *,
    target: str,
    numeric: list[str],
    categorical: list[str],
    clean: Callable[[pd.DataFrame, str], pd.DataFrame],
    sample_rows: int,
    eval_rows: int | None,
) -> PassResult:
    """Read every chunk once and gather :class:`PassResult`.

    ``clean`` checks and trims each frame as the whole-table reader does (dropped columns,
    nested values, infinite targets), given a source that names the rows.
    """
    import pandas as pd

    digest = hashlib.sha256()
    result = PassResult(
        starts=[],
        train_counts=[],
        rows=0,
        unlabelled=0,
        numeric=Moments(len(numeric)),
        vocabularies=[set() for _ in categorical],
        target=Moments(1),
        labels=Labels(),
        fingerprint="",
    )
    samples = {"train": Sample(sample_rows), "val": Sample(eval_rows), "test": Sample(eval_rows)}
    for chunk in range(len(chunks)):
        result.starts.append(result.rows)
        count = 0
        for frame in chunks.read(chunk):
            frame.index = pd.RangeIndex(result.rows, result.rows + len(frame))
            result.rows += len(frame)
            if not len(frame):
                continue
            digest.update(repr([str(c) for c in frame.columns]).encode())
            digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
            source = f"{chunks.path} (rows {frame.index[0]}-{frame.index[-1]})"
            frame = clean(frame, source)
            labelled = frame.loc[frame[target].notna()]
            result.unlabelled += len(frame) - len(labelled)
            positions = labelled.index.to_numpy()
            parts, keys = rule.assign(positions), rule.sample_keys(positions)
            result.labels.add(labelled[target])
            train = labelled.loc[parts == TRAIN]
            result.numeric.add(numeric_matrix(train, numeric, source))
            for vocabulary, column in zip(result.vocabularies, categorical, strict=True):
                vocabulary.update(category_keys(train[column]).tolist())
            as_number = pd.to_numeric(train[target], errors="coerce")
            result.target.add(as_number.to_numpy(dtype=np.float64, na_value=np.nan)[:, None])
            for name, part in (("train", TRAIN), ("val", VAL), ("test", TEST)):
                samples[name].add(labelled.loc[parts == part], keys[parts == part])
            count += len(train)
        result.train_counts.append(count)
    result.fingerprint = digest.hexdigest()[:16]
    result.samples = {name: sample.rows() for name, sample in samples.items()}
    return result
