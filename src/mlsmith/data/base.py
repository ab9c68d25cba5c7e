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
    import pandas as pd

PREPROCESSING_FILE = "preprocessing.json"


@dataclass
class Split:
    """One split as model inputs (name -> array with rows first) and encoded targets."""

    inputs: dict[str, np.ndarray]
    target: np.ndarray

    def __len__(self) -> int:
        return len(self.target)


class Preprocessor(Protocol):
    """Fitted on the training split only; turns raw rows into model inputs."""

    task: Task
    target: str

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
