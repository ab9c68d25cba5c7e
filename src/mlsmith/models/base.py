"""The model contract every family follows, torch networks and (later) boosted trees alike.

The rest of mlsmith (evaluation, prediction, tracking, reports, tuning, export, serving) talks
to a :class:`Model` only through this contract, so it never needs to know which family produced
the model. ``tests/models/test_contract.py`` runs the same conformance test over every family
in mlsmith.families.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mlsmith.config import Config

if TYPE_CHECKING:
    from mlsmith.data.base import PreparedData, Preprocessor


@dataclass
class FitContext:
    """Where and how a model is trained."""

    run_dir: Path
    callbacks: list[object] = field(default_factory=list)
    resume: bool = False
    # Saved beside the weights (resolved config, code version...).
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class FitSummary:
    """What training produced, whatever the family."""

    history: list[dict[str, float]]
    best_epoch: int | None
    stopped_early: bool
    # Things a person should know about how training went (e.g. overfitting), one line each.
    observations: list[str] = field(default_factory=list)


class Model(ABC):
    """fit / predict_raw / predict / load, and the files that make up the fitted model."""

    family: ClassVar[str]

    def __init__(self, config: Config, preprocessor: Preprocessor) -> None:
        self.config = config
        self.preprocessor = preprocessor
        self.task = preprocessor.task

    @abstractmethod
    def fit(self, data: PreparedData, context: FitContext) -> FitSummary:
        """Train on ``data.train``, selecting on ``data.val``; afterwards the model holds its
        best state and ``context.run_dir`` holds what :meth:`load` needs."""

    @abstractmethod
    def predict_raw(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Raw outputs (n, task.n_outputs) for preprocessed inputs, computed in batches."""

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Class probabilities (n, C) or regression values (n,) in the target's units."""
        return self.task.decode(self.predict_raw(inputs))

    @classmethod
    @abstractmethod
    def load(cls, run_dir: Path, config: Config, preprocessor: Preprocessor) -> Model:
        """The fitted model saved in ``run_dir``."""

    @abstractmethod
    def artifacts(self, run_dir: Path) -> list[Path]:
        """Files holding the fitted model, for tracking."""
