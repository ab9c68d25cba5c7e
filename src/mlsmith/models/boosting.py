"""Boosting rounds as epochs: history rows, callbacks and early stopping for tree families.

The FitContext callbacks (progress, history.csv, MLflow, a tuner's pruning) were written for the
torch :class:`~mlsmith.training.trainer.Trainer`; :class:`RoundState` carries the few attributes
they read, so they work unchanged on boosting rounds. :class:`RoundRecorder` is called after
every round by a library callback (LightGBM or XGBoost), keeps at most about
:data:`HISTORY_ROWS` rows of history, and says when to stop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mlsmith.tasks import Task
from mlsmith.training.callbacks import CallbackList

# History rows per run at most (plus round 1, the best and the last round): enough for curves.
# A row costs one pass of the task's metrics over the validation predictions, which the
# libraries keep up to date round by round (nothing is predicted again).
HISTORY_ROWS = 100


@dataclass
class RoundState:
    """What the callbacks read from a trainer, for boosting: one "epoch" is one round."""

    epochs: int  # rounds at most
    lr: float
    history: list[dict[str, float]] = field(default_factory=list)
    # Trees have no optimizer steps; steps.csv stays empty.
    step_rows: list[tuple[float, ...]] = field(default_factory=list)
    layer_names: list[str] = field(default_factory=list)
    layer_rows: list[tuple[float, ...]] = field(default_factory=list)
    # A callback (a tuner pruning the trial...) sets this to stop boosting after this round.
    should_stop: bool = False
    epoch: int = 0
    steps_per_epoch: int = 1
    step_in_epoch: int = 0
    samples_in_epoch: int = 0
    last_loss: float = math.nan

    def running_loss(self) -> float:
        return self.last_loss


class RoundRecorder:
    """Tracks the validation loss per round, records history rows and decides when to stop."""

    def __init__(
        self,
        task: Task,
        val_target: np.ndarray,
        callbacks: list[object],
        *,
        val_groups: np.ndarray | None = None,
        rounds: int,
        lr: float,
        patience: int | None,
        n_train: int,
    ) -> None:
        self.task = task
        self.truth = task.truth(val_target)
        self.groups = val_groups  # a ranking's queries: its metrics are per query
        self.callbacks = CallbackList(callbacks)
        self.state = RoundState(epochs=rounds, lr=lr)
        self.patience = patience
        self.n_train = n_train
        self.every = max(1, math.ceil(rounds / HISTORY_ROWS))
        self.losses: list[tuple[float, float]] = []  # (train, val) per round
        self.best_round = 0
        self.best_loss = math.inf
        self.stopped_by_patience = False
        self._last_time = time.perf_counter()
        self._last_recorded = 0
        self._seconds = 0.0  # training time so far, without validation rows and callbacks

    def start(self) -> None:
        self.callbacks.call("on_fit_start", self.state)
        self._last_time = time.perf_counter()

    def after_round(
        self,
        round_: int,
        val_loss: float,
        train_loss_now: Callable[[], float],
        decoded_now: Callable[[], np.ndarray],
    ) -> bool:
        """Record round ``round_`` (1-based); True when boosting should stop after it.

        ``train_loss_now()`` and ``decoded_now()`` (the decoded validation predictions) are
        asked for only on the rounds that become history rows or beat the best so far: on a
        large table, evaluating the training loss every round costs as much as the boosting.
        """
        best = val_loss < self.best_loss  # strictly, as LightGBM's and XGBoost's own stopping
        if best:
            self.best_loss, self.best_round = val_loss, round_
        if self.patience is not None and round_ - self.best_round >= self.patience:
            self.stopped_by_patience = True
        stop = self.stopped_by_patience or self.state.should_stop
        row = round_ == 1 or round_ % self.every == 0 or stop or round_ == self.state.epochs
        train_loss = train_loss_now() if row or best else math.nan
        self.losses.append((train_loss, val_loss))
        if not math.isnan(train_loss):
            self.state.last_loss = train_loss
        if row:
            self._record(round_, decoded_now)
        # A callback may have asked to stop during that row's on_epoch_end.
        return stop or self.state.should_stop

    def finish(self, kept: int, decoded_at: Callable[[int], np.ndarray]) -> None:
        """Add the kept round's row if the schedule skipped it, in round order.

        ``decoded_at(r)`` gives the decoded validation predictions of the first ``r`` rounds.
        """
        rows = self.state.history
        if all(int(r["epoch"]) != kept for r in rows):
            # Its own time was not measured: the run's mean time per round stands in.
            row = self._row(kept, decoded_at(kept), seconds=self._seconds, rounds=self.rounds_run)
            rows.append(row)
            rows.sort(key=lambda r: r["epoch"])
            self.callbacks.call("on_epoch_end", self.state, row)
        self.callbacks.call("on_fit_end", self.state)

    def fail(self, error: BaseException) -> None:
        self.callbacks.call("on_exception", self.state, error)

    @property
    def rounds_run(self) -> int:
        return len(self.losses)

    def _record(self, round_: int, decoded_now: Callable[[], np.ndarray]) -> None:
        now = time.perf_counter()
        rounds = round_ - self._last_recorded
        self._seconds += now - self._last_time
        row = self._row(round_, decoded_now(), seconds=now - self._last_time, rounds=rounds)
        self.state.history.append(row)
        self.state.epoch = round_
        self.callbacks.call("on_epoch_end", self.state, row)
        self._last_recorded = round_
        # Validation predictions and callbacks are not training time.
        self._last_time = time.perf_counter()

    def _row(
        self, round_: int, decoded: np.ndarray, *, seconds: float, rounds: int
    ) -> dict[str, float]:
        train_loss, val_loss = self.losses[round_ - 1]
        metrics = self.task.metrics(self.truth, decoded, self.groups)
        per_round = seconds / rounds if rounds else math.nan
        return {
            "epoch": round_,
            "step": round_,
            "train/loss": train_loss,
            "val/loss": val_loss,
            **{f"val/{name}": value for name, value in metrics.items()},
            "lr": self.state.lr,
            "samples_per_s": self.n_train / per_round if per_round > 0 else math.nan,
            "epoch_time_s": per_round,
        }
