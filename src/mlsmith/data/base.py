"""What every data kind (tabular, images, text) provides, and the steps their preprocessors share.

A data kind turns the ``data`` config into a :class:`PreparedData`: arrays for each split, the
fitted :class:`Preprocessor` that produced them (saved with the run so prediction takes raw
rows), the task, and a fingerprint of the source data.

:class:`Preprocessor` holds what the kinds have in common: reading a user's file into raw rows,
turning labelled rows into a :class:`Split` (rows without a target dropped with a warning),
default batching, and ``preprocessing.json`` (written atomically; on load its ``kind`` must be
the loader's). A kind keeps only what differs: its fitted state, ``transform`` and
``model_inputs``, and any reading or batching of its own.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from mlsmith.data.batches import BatchOptions, TensorBatches
from mlsmith.data.tables import iter_table, read_table
from mlsmith.errors import DataError, RunError
from mlsmith.files import read_json, write_json
from mlsmith.runtime.frames import require_columns
from mlsmith.tasks import ClassificationTask, Task, task_from_dict

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pandas as pd

log = logging.getLogger(__name__)

PREPROCESSING_FILE = "preprocessing.json"

P = TypeVar("P", bound="Preprocessor")


@dataclass
class Split:
    """One split as model inputs (name -> array with rows first) and encoded targets;
    ``groups``: a ranking task's query id of each row (text), None for the other tasks."""

    inputs: dict[str, np.ndarray]
    target: np.ndarray
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.target)

    def streamed(self, options: BatchOptions) -> TensorBatches | None:
        """Batches that read this split from its file rather than from ``inputs``; None for
        a split held in memory (every split but a ``data.stream`` training split)."""
        return None


class Preprocessor(ABC):
    """Fitted on the training split only; turns raw rows into model inputs.

    A "frame" is the data kind's raw rows as a DataFrame: table rows, image paths (or arrays),
    texts. ``read``/``iter_read`` produce frames from a user's file, so evaluate and predict work
    the same way for every kind.
    """

    # The data.type this preprocessing belongs to, saved as "kind" in preprocessing.json.
    kind: ClassVar[str]
    # Input columns copied into prediction output by default (e.g. an image's path).
    output_columns: tuple[str, ...] = ()
    # How messages name the target column ("label" for images, whose folders are the labels).
    target_role: ClassVar[str] = "target"
    # More strings read as missing in a user's files (tabular keeps data.na_values here).
    na_values: Sequence[str] = ()

    def __init__(self, *, target: str, task: Task) -> None:
        self.target = target
        self.task = task

    # --- raw rows ---------------------------------------------------------------------------

    def read(self, path: str) -> pd.DataFrame:
        """Raw rows from a file (or folder) a user passes to evaluate or predict."""
        return read_table(path, na_values=self.na_values)

    def iter_read(self, path: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
        """The same rows in chunks of at most ``chunk_rows``, for data larger than memory."""
        return iter_table(path, chunk_rows, na_values=self.na_values)

    # --- model inputs -----------------------------------------------------------------------

    @abstractmethod
    def transform(self, frame: pd.DataFrame, source: str = "input") -> dict[str, np.ndarray]:
        """Raw rows (target column optional) to model inputs."""

    @abstractmethod
    def model_inputs(self) -> dict[str, Any]:
        """What a model family needs to size itself (feature counts, vocabularies...)."""

    def to_split(self, frame: pd.DataFrame, source: str) -> Split:
        """Labelled raw rows to a Split; rows without a target are dropped with a warning."""
        frame = self.labelled_rows(frame, source)
        return Split(
            self.transform(frame, source),
            self.encode_target(frame, source),
            self.query_groups(frame, source),
        )

    def query_groups(self, frame: pd.DataFrame, source: str) -> np.ndarray | None:
        """Each row's query id as text (ranking); None when the task has no queries."""
        return None

    def labelled_rows(self, frame: pd.DataFrame, source: str) -> pd.DataFrame:
        """``frame`` without the rows whose target is missing; a DataError without the column."""
        require_columns(frame, [self.target], source, self.target_role)
        return drop_missing_target(frame, self.target, source)

    def encode_target(self, frame: pd.DataFrame, source: str) -> np.ndarray:
        """The target column encoded for the task; a bad label is a DataError naming ``source``."""
        try:
            return self.task.encode(frame[self.target])
        except DataError as error:
            raise DataError(f"{source}: {error}") from None

    def batches(
        self, inputs: dict[str, np.ndarray], target: np.ndarray | None, options: BatchOptions
    ) -> TensorBatches:
        """Batches for the Trainer or prediction; ``options.train`` turns on augmentation."""
        return TensorBatches(inputs, target, options)

    # --- preprocessing.json -----------------------------------------------------------------

    @abstractmethod
    def fitted_state(self) -> dict[str, Any]:
        """This kind's fitted state as plain JSON values: the constructor's other arguments."""

    def to_dict(self) -> dict[str, Any]:
        """Everything ``preprocessing.json`` holds; ``from_dict`` turns it back."""
        return {
            "kind": self.kind,
            "target": self.target,
            "task": self.task.to_dict(),
            **self.fitted_state(),
        }

    @classmethod
    def from_dict(cls: type[P], state: Mapping[str, Any]) -> P:
        """The preprocessor ``to_dict`` described (``kind`` is checked by ``load``, not here)."""
        arguments = {k: v for k, v in state.items() if k != "kind"}
        arguments["task"] = task_from_dict(state["task"])
        return cls(**arguments)

    def save(self, directory: Path) -> None:
        """Write the fitted state to ``directory/preprocessing.json`` (atomically)."""
        write_json(Path(directory) / PREPROCESSING_FILE, self.to_dict())

    @classmethod
    def load(cls: type[P], directory: Path) -> P:
        """The preprocessor saved under ``directory``; a RunError if it is another kind's."""
        return cls.from_dict(read_preprocessing(directory, cls.kind))


def read_preprocessing(directory: Path, kind: str) -> dict[str, Any]:
    """``directory/preprocessing.json`` as a dict, checked to be of ``kind``.

    FileNotFoundError when it is missing (the run reports that); a RunError naming the file and
    both kinds when it belongs to another data kind, e.g. an image run's loaded as tabular.
    """
    file = Path(directory) / PREPROCESSING_FILE
    state = read_json(file)
    found = state.get("kind") if isinstance(state, dict) else None
    if found != kind:
        what = f"kind '{found}'" if found else "no kind"
        raise RunError(
            f"{file}: preprocessing of {what}, expected '{kind}'; it was written for other data "
            f"than this run's data.type '{kind}'"
        )
    return state


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


def drop_missing_target(frame: pd.DataFrame, target: str, source: str) -> pd.DataFrame:
    """``frame`` without the rows whose ``target`` is missing, with a warning saying how many."""
    missing = frame[target].isna()
    if missing.any():
        log.warning(
            "%s: dropped %d of %d rows whose target '%s' is missing",
            source,
            int(missing.sum()),
            len(frame),
            target,
        )
        frame = frame.loc[~missing]
    return frame


def warn_missing_classes(
    task: Task, frames: Mapping[str, pd.DataFrame], target: str, unit: str = "rows"
) -> None:
    """Warn for every split (name -> rows) that lacks some class of a classification task."""
    if not isinstance(task, ClassificationTask):
        return
    for name, frame in frames.items():
        absent = task.absent_classes(frame[target])
        if absent:
            log.warning("%s split has no %s of class(es) %s", name, unit, absent)
