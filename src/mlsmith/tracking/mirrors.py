"""Trackers beside MLflow (``track.backends``): TensorBoard event files under the run directory.

A mirror gets what the MLflow run gets: the params at the start, the per-epoch metrics, the
per-step learning rate, loss and gradient norm, the final metrics, and the end. TensorBoard's
files lie in ``<run>/tensorboard/`` (``tensorboard --logdir runs/``): scalars by epoch and by
step, the config as text, and the params with the final test metrics in its HParams tab. Like
the MLflow tracker, a mirror is a passenger: a failure warns once, switches that mirror off,
and training goes on.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Protocol

from mlsmith.errors import MissingExtraError

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"


class Mirror(Protocol):
    """A tracker beside MLflow."""

    name: str

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_steps(self, rows: list[tuple[float, ...]]) -> None: ...

    def finish(self, status: str) -> None: ...


class TensorBoardMirror:
    """Event files in ``<run_dir>/tensorboard`` (see the module)."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, params: dict[str, Any], config_yaml: str) -> None:
        try:
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MissingExtraError(
                "tensorboard", "tensorboard", "track.backends: tensorboard"
            ) from None
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))
        self.params = {k: _hparam(v) for k, v in params.items()}
        self.finals: dict[str, float] = {}
        self.writer.add_text("config", f"```yaml\n{config_yaml}\n```", 0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(key, float(value), step)
                if key.startswith("test/"):
                    self.finals[key] = float(value)

    def log_steps(self, rows: list[tuple[float, ...]]) -> None:
        for step, _, lr, loss, grad_norm in rows:
            for key, value in (("step/lr", lr), ("step/loss", loss), ("step/grad_norm", grad_norm)):
                if math.isfinite(value):
                    self.writer.add_scalar(key, float(value), int(step))

    def finish(self, status: str) -> None:
        if self.finals:
            # In the run's own folder (run_name "."), not a timestamped one beside it.
            self.writer.add_hparams(self.params, self.finals, run_name=".")
        self.writer.add_text("status", status, 0)
        self.writer.close()


def _hparam(value: Any) -> bool | int | float | str:
    """A param as TensorBoard's HParams tab takes it (lists and None as text)."""
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)
