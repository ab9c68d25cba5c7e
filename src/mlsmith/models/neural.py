"""Torch network families: build a ``torch.nn.Module``, train it with the :class:`Trainer`."""

from __future__ import annotations

import contextvars
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mlsmith.config import Config
from mlsmith.models.base import FitContext, FitSummary, Model
from mlsmith.training.checkpoint import BEST, LAST, load_checkpoint
from mlsmith.training.device import resolve_device
from mlsmith.training.trainer import Trainer, predict_raw

if TYPE_CHECKING:
    from mlsmith.data.base import PreparedData, Preprocessor

CHECKPOINT_DIR = "checkpoints"
PROFILE_DIR = "profile"  # train.profile's trace and summary
# Set while a network is built to receive a checkpoint's weights: pretrained weights would be
# overwritten at once, so the local cache is not read (a run loads where the cache is absent).
_FROM_CHECKPOINT = contextvars.ContextVar("mlsmith_from_checkpoint", default=False)


@contextmanager
def weights_from_checkpoint() -> Iterator[None]:
    """Networks built inside take no pretrained weights: a checkpoint's replace them."""
    token = _FROM_CHECKPOINT.set(True)
    try:
        yield
    finally:
        _FROM_CHECKPOINT.reset(token)


def use_pretrained(pretrained: bool) -> bool:
    """Whether a network built now loads ``model.pretrained`` weights (see
    :func:`weights_from_checkpoint`)."""
    return pretrained and not _FROM_CHECKPOINT.get()


class NeuralModel(Model):
    """A network trained by the Trainer; its fitted form is ``checkpoints/best.pt``."""

    def __init__(self, config: Config, preprocessor: Preprocessor) -> None:
        super().__init__(config, preprocessor)
        # Built right away so the seeded global RNG gives the same initial weights every time.
        self.network = self.build_network()
        self.device = torch.device("cpu")

    @abstractmethod
    def build_network(self) -> torch.nn.Module:
        """The untrained network for ``self.config.model`` and ``self.preprocessor``."""

    def fit(self, data: PreparedData, context: FitContext) -> FitSummary:
        cfg = self.config.train
        from mlsmith.data.batches import BatchOptions, split_batches

        training = BatchOptions.training(cfg, self.config.seed)
        train = split_batches(self.preprocessor, data.train, training)
        val = split_batches(self.preprocessor, data.val, BatchOptions.evaluation(cfg))
        checkpoints = context.run_dir / CHECKPOINT_DIR
        trainer = Trainer(
            cfg,
            checkpoint_dir=checkpoints,
            callbacks=context.callbacks,
            metadata=context.metadata,
            profile_dir=context.run_dir / PROFILE_DIR,
        )
        resume = checkpoints / LAST if context.resume and (checkpoints / LAST).exists() else None
        result = trainer.fit(self.network, train, val, self.task, resume=resume)
        self.device = trainer.device
        if trainer.world.active and trainer.world.main:
            # Several processes left the network wrapped for them (synchronised batch norm,
            # FSDP's shards): rank 0 evaluates and exports a plain one with the best weights.
            self.network = self._rebuilt(result.best_checkpoint)
        return FitSummary(
            result.history, result.best_epoch, result.stopped_early, result.observations
        )

    def _rebuilt(self, checkpoint: Path) -> torch.nn.Module:
        """A fresh network with the weights of ``checkpoint``, on ``self.device``."""
        with torch.random.fork_rng(devices=[]), weights_from_checkpoint():
            network = self.build_network()  # building draws weights: the RNG is left be
        network.load_state_dict(load_checkpoint(checkpoint, map_location=self.device)["model"])
        return network.to(self.device)

    def predict_raw(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        from mlsmith.data.batches import BatchOptions

        batches = self.preprocessor.batches(
            inputs, None, BatchOptions.evaluation(self.config.train)
        )
        raw, _ = predict_raw(self.network, batches, keep=getattr(self.task, "compact", None))
        return raw

    @classmethod
    def load(
        cls, run_dir: Path, config: Config, preprocessor: Preprocessor, device: str = "auto"
    ) -> NeuralModel:
        with weights_from_checkpoint():
            model = cls(config, preprocessor)
        model.device = resolve_device(device)
        state = load_checkpoint(Path(run_dir) / CHECKPOINT_DIR / BEST, map_location=model.device)
        model.network.load_state_dict(state["model"])
        model.network.to(model.device).eval()
        return model

    def artifacts(self, run_dir: Path) -> list[Path]:
        return [Path(run_dir) / CHECKPOINT_DIR / BEST]
