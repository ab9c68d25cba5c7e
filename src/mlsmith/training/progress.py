"""Training progress on the terminal: a Rich bar on a TTY, one plain line per epoch otherwise."""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from mlsmith.training.callbacks import Callback

if TYPE_CHECKING:
    from mlsmith.training.callbacks import TrainingState

# Shown in the per-epoch line when present, in this order.
LINE_KEYS = (
    "train/loss",
    "val/loss",
    "val/accuracy",
    "val/roc_auc",
    "val/f1_macro",
    "val/rmse",
    "val/r2",
    "val/miou",
    "val/map_50",
)


def format_epoch(row: dict[str, float], epochs: int) -> str:
    """One human line for an epoch's history row."""
    parts = [f"epoch {int(row['epoch'])}/{epochs}"]
    parts += [f"{key} {row[key]:.4f}" for key in LINE_KEYS if key in row]
    if math.isfinite(row.get("lr", math.nan)):  # NaN: a family without a learning rate
        parts.append(f"lr {row['lr']:.2e}")
    if "grad_norm" in row:
        parts.append(f"grad norm {row['grad_norm']:.3g}")
    parts.append(f"{row['samples_per_s']:,.0f} samples/s")
    if row.get("memory_mb", 0) > 0:
        parts.append(f"{row['memory_mb']:,.0f} MB")
    if "gpu_util_pct" in row:
        parts.append(f"GPU {row['gpu_util_pct']:.0f}%")
    parts.append(f"{row['epoch_time_s']:.1f}s")
    return "  ".join(parts)


class ProgressReporter(Callback):
    """Reports to ``stream`` (stderr by default, so stdout stays clean for scripts)."""

    # Reading the loss synchronises with the GPU; do it a few times a second at most.
    REFRESH_S = 0.25

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self._progress: Any = None
        self._task: Any = None
        self._last_refresh = 0.0
        self._epoch_started = 0.0
        self._epoch_start_samples = 0

    def on_fit_start(self, state: TrainingState) -> None:
        if not self.live:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=Console(file=self.stream),
            transient=False,
        )
        self._progress.start()
        self._new_epoch(state)

    def on_train_step_end(self, state: TrainingState) -> None:
        if self._progress is None:
            return
        now = time.perf_counter()
        last_step = state.step_in_epoch >= state.steps_per_epoch
        if now - self._last_refresh < self.REFRESH_S and not last_step:
            return
        self._last_refresh = now
        elapsed = now - self._epoch_started
        rate = (state.samples_in_epoch - self._epoch_start_samples) / elapsed if elapsed else 0.0
        self._progress.update(
            self._task,
            completed=state.step_in_epoch,
            stats=f"loss {state.running_loss():.4f}  lr {state.lr:.2e}  {rate:,.0f} samples/s",
        )

    def on_epoch_end(self, state: TrainingState, row: dict[str, float]) -> None:
        line = format_epoch(row, state.epochs)
        if self._progress is None:
            print(line, file=self.stream, flush=True)
            return
        self._progress.update(self._task, completed=state.steps_per_epoch, stats="")
        self._progress.console.print(line)
        self._progress.remove_task(self._task)
        if state.epoch < state.epochs and not state.should_stop:
            self._new_epoch(state)

    def on_fit_end(self, state: TrainingState) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def on_exception(self, state: TrainingState, error: BaseException) -> None:
        self.on_fit_end(state)

    def _new_epoch(self, state: TrainingState) -> None:
        self._epoch_started = time.perf_counter()
        # Non-zero when resuming mid-epoch: those samples were not trained in this process.
        self._epoch_start_samples = state.samples_in_epoch
        self._task = self._progress.add_task(
            f"epoch {state.epoch + 1}/{state.epochs}",
            total=state.steps_per_epoch,
            completed=state.step_in_epoch,
            stats="",
        )
