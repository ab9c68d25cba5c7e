"""Train / validation / test splits: stratified, grouped or chronological, always seeded."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mlsmith.config import DataSourceConfig, SplitConfig
from mlsmith.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitIndices:
    """Row positions of each split in the source table, each sorted ascending."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_rows(
    frame: pd.DataFrame,
    cfg: SplitConfig,
    *,
    val: float,
    test: float,
    classification: bool,
    target: str,
    seed: int,
    source: str,
) -> SplitIndices:
    """Divide ``frame``'s rows into train/val/test with the given fractions (0: a fixed file).

    Chronological splits never shuffle. Group splits keep every value of the group column in
    one split. Otherwise classification targets are stratified unless ``stratify: false``.
    """
    n = len(frame)
    positions = np.arange(n)
    if cfg.group and frame[cfg.group].isna().any():
        missing = frame[cfg.group].isna().to_numpy()
        raise DataError(
            f"{source}: {int(missing.sum())} rows have no value in the group column "
            f"'{cfg.group}' (first: row {frame.index[int(np.flatnonzero(missing)[0])]}); every "
            "row must belong to a group (for a ranking: to a query)"
        )
    if cfg.time:
        order = np.argsort(sortable(frame[cfg.time], cfg.time, source), kind="stable")
        n_test, n_val = round(n * test), round(n * val)
        n_train = n - n_test - n_val
        return _indices(order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])

    try:
        rest, test_idx = _cut(frame, positions, test, cfg, classification, target, seed)
        # The validation share is of the whole table, so rescale it to what the test cut left.
        val_share = val / (1.0 - test) if test < 1.0 else 0.0
        train_idx, val_idx = _cut(frame, rest, val_share, cfg, classification, target, seed + 1)
    except ValueError as exc:
        # scikit-learn refuses splits that leave a part empty (too few rows or groups).
        by = f"groups of '{cfg.group}'" if cfg.group else "rows"
        raise DataError(
            f"{source}: cannot split {n} rows by {by} into train/val/test with val={val} "
            f"test={test}: {exc} (add rows or change data.split)"
        ) from None
    return _indices(train_idx, val_idx, test_idx)


def _cut(
    frame: pd.DataFrame,
    positions: np.ndarray,
    share: float,
    cfg: SplitConfig,
    classification: bool,
    target: str,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``positions`` into (keep, cut) with about ``share`` of them in ``cut``."""
    if share <= 0.0 or len(positions) == 0:
        return positions, positions[:0]
    from sklearn.model_selection import GroupShuffleSplit, train_test_split

    if cfg.group:
        groups = frame[cfg.group].to_numpy()[positions]
        splitter = GroupShuffleSplit(n_splits=1, test_size=share, random_state=seed)
        keep, cut = next(splitter.split(positions, groups=groups))
        return positions[keep], positions[cut]

    stratify = cfg.stratify if cfg.stratify is not None else classification
    labels = frame[target].to_numpy()[positions] if stratify else None
    try:
        keep, cut = train_test_split(positions, test_size=share, random_state=seed, stratify=labels)
    except ValueError as exc:
        if labels is None:
            raise
        # Too few rows in some class to stratify; a random split may still work (if not, its
        # ValueError becomes a DataError in split_rows), so warn and go on.
        keep, cut = train_test_split(positions, test_size=share, random_state=seed)
        log.warning("stratified split impossible (%s); using a random split instead", exc)
    return np.asarray(keep), np.asarray(cut)


def sortable(column: pd.Series, name: str, source: str) -> np.ndarray:
    """``column`` as values that sort chronologically: numbers, or dates parsed from text."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_datetime64_any_dtype(column):
        return column.to_numpy()
    try:
        with warnings.catch_warnings():
            # pandas warns before failing on text that is not dates; the DataError says it all.
            warnings.simplefilter("ignore", UserWarning)
            return pd.to_datetime(column).to_numpy()
    except (ValueError, TypeError):
        raise DataError(
            f"{source}: time column '{name}' holds values that are neither numbers nor dates, "
            f"e.g. {column.iloc[0]!r}"
        ) from None


def _indices(train: np.ndarray, val: np.ndarray, test: np.ndarray) -> SplitIndices:
    return SplitIndices(np.sort(train), np.sort(val), np.sort(test))


@dataclass(frozen=True)
class SplitFrames:
    """Each split's rows, and where the rows taken from the main table sit in it.

    ``val`` and ``test`` are the fixed files where given; their ``indices`` are then empty.
    Data kinds that hold the main table's inputs as arrays (decoded images) slice them with
    ``indices``.
    """

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    indices: SplitIndices


def split_frames(
    main: pd.DataFrame,
    val_file: pd.DataFrame | None,
    test_file: pd.DataFrame | None,
    data: DataSourceConfig,
    *,
    classification: bool,
    seed: int,
    unit: str = "rows",
) -> SplitFrames:
    """Train, val and test rows: fixed files where given, seeded splits of ``main`` otherwise.

    The one way every data kind splits, so the same seed picks the same rows whatever the kind.
    Raises DataError (counting ``unit``, e.g. "images") when training or validation would be
    empty.
    """
    indices = split_rows(
        main,
        data.split,
        val=0.0 if val_file is not None else data.split.val,
        test=0.0 if test_file is not None else data.split.test,
        classification=classification,
        target=data.target,
        seed=seed,
        source=data.path,
    )
    train = main.iloc[indices.train]
    val = val_file if val_file is not None else main.iloc[indices.val]
    test = test_file if test_file is not None else main.iloc[indices.test]
    if len(train) == 0 or len(val) == 0:
        raise DataError(
            f"{data.path}: {len(main)} {unit} leave {len(train)} for training and {len(val)} for "
            f"validation; both need at least one (add {unit} or change data.split)"
        )
    return SplitFrames(train, val, test, indices)
