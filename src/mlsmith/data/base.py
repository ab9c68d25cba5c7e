"""The data protocol: what every data kind (tabular now; images, text, series later) provides.

A data kind turns the ``data`` config into a :class:`PreparedData`: arrays for each split, the
fitted :class:`Preprocessor` that produced them (saved with the run so prediction takes raw
rows), the task, and a fingerprint of the source data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from mlsmith.tasks import Task

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pandas as pd

    from mlsmith.data.batches import TensorBatches

PREPROCESSING_FILE = "preprocessing.json"


@dataclass
class Split:
    """One split as model inputs (name -> array with rows first) and encoded targets."""

    inputs: dict[str, np.ndarray]
    target: np.ndarray

    def __len__(self) -> int:
        return len(self.target)


class Preprocessor(Protocol):
    """Fitted on the training split only; turns raw rows into model inputs.

    A "frame" is the data kind's raw rows as a DataFrame: table rows, image paths (or arrays),
    texts. ``read``/``iter_read`` produce frames from a user's file, so evaluate and predict work
    the same way for every kind.
    """

    task: Task
    target: str
    # Input columns copied into prediction output by default (e.g. an image's path).
    output_columns: tuple[str, ...]

    def read(self, path: str) -> pd.DataFrame:
        """Raw rows from a file (or folder) a user passes to evaluate or predict."""
        ...

    def iter_read(self, path: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
        """The same rows in chunks of at most ``chunk_rows``, for data larger than memory."""
        ...

    def batches(
        self,
        split_inputs: dict[str, np.ndarray],
        target: np.ndarray | None,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        train: bool = False,
    ) -> TensorBatches:
        """Batches for the Trainer or prediction; ``train`` turns on augmentation."""
        ...

    def transform(self, frame: pd.DataFrame, source: str = "input") -> dict[str, np.ndarray]:
        """Raw rows (target column optional) to model inputs."""
        ...

    def to_split(self, frame: pd.DataFrame, source: str) -> Split:
        """Labelled raw rows to a Split; rows without a target are dropped with a warning."""
        ...

    def model_inputs(self) -> dict[str, Any]:
        """What a model family needs to size itself (feature counts, vocabularies...)."""
        ...

    def save(self, directory: Path) -> None:
        """Write the fitted state under ``directory`` (atomically)."""
        ...


@dataclass
class PreparedData:
    """Everything training needs from the data, ready for tensors."""

    task: Task
    preprocessor: Preprocessor
    train: Split
    val: Split
    test: Split | None
    fingerprint: str
    summary: dict[str, Any] = field(default_factory=dict)
    # The raw rows of each split ("train", "val", "test"), target included, for the data checks
    # (missing values, constant columns, leakage). Training drops them once checked.
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
