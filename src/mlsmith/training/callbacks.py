"""The callback interface and early stopping.

Callbacks are duck-typed: a training loop calls ``on_fit_start``, ``on_train_step_end``,
``on_epoch_end``, ``on_fit_end`` and, when training fails, ``on_exception`` on whoever defines
them, passing a :class:`TrainingState`: the torch :class:`~mlsmith.training.trainer.Trainer`
and the boosting rounds of the tree families both are one, so one callback (progress,
history.csv, MLflow, a tuner's pruning) serves both. :class:`Callback` gives no-op defaults to
subclass. A callback may set ``state.should_stop = True`` to end training after the current
epoch or round (tuning prunes trials this way).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

LOWER_IS_BETTER = ("loss", "error", "mse", "rmse", "mae", "mape", "mase", "smape", "wql")
HOOKS = ("on_fit_start", "on_train_step_end", "on_epoch_end", "on_fit_end", "on_exception")


@runtime_checkable
class TrainingState(Protocol):
    """What a callback may read from a training loop; ``should_stop`` it may also set.

    For boosted trees an epoch is one boosting round and a step is a round too.
    """

    should_stop: bool

    @property
    def epochs(self) -> int:
        """Epochs (or rounds) planned."""

    @property
    def epoch(self) -> int:
        """Epochs completed."""

    @property
    def steps_per_epoch(self) -> int: ...

    @property
    def step_in_epoch(self) -> int:
        """Optimizer steps taken in the epoch in progress."""

    @property
    def samples_in_epoch(self) -> int: ...

    @property
    def history(self) -> list[dict[str, float]]:
        """One row per finished epoch: the metrics callbacks log."""

    @property
    def step_rows(self) -> list[tuple[float, ...]]:
        """One (step, epoch, lr, loss, grad_norm) row per optimizer step so far."""

    @property
    def layer_names(self) -> list[str]:
        """The layers whose gradient norms are sampled every few steps (none for trees)."""

    @property
    def layer_rows(self) -> list[tuple[float, ...]]:
        """(step, norm of each of ``layer_names``) for each sampled step, in step order."""

    @property
    def lr(self) -> float: ...

    def running_loss(self) -> float:
        """The epoch's mean training loss so far (may wait for the device)."""


class Callback:
    """No-op base; override what you need."""

    def on_fit_start(self, state: TrainingState) -> None: ...

    def on_train_step_end(self, state: TrainingState) -> None: ...

    def on_epoch_end(self, state: TrainingState, row: dict[str, float]) -> None: ...

    def on_fit_end(self, state: TrainingState) -> None: ...

    def on_exception(self, state: TrainingState, error: BaseException) -> None: ...


class CallbackList:
    """Calls a hook on every callback that defines it, in order.

    The methods are looked up once, here: ``on_train_step_end`` runs every optimizer step, and
    a hook nobody defines then costs one empty loop.
    """

    def __init__(self, callbacks: Iterable[object]) -> None:
        self.callbacks = list(callbacks)
        self.hooks = {hook: self._methods(hook) for hook in HOOKS}

    def call(self, hook: str, *args: Any) -> None:
        methods = self.hooks.get(hook)
        if methods is None:  # a hook outside HOOKS: look it up each time
            methods = self._methods(hook)
        for method in methods:
            method(*args)

    def _methods(self, hook: str) -> list[Callable[..., Any]]:
        """The callbacks' methods for ``hook``, leaving out :class:`Callback`'s no-op defaults."""
        noop = getattr(Callback, hook, None)
        return [
            method
            for c in self.callbacks
            if (method := getattr(c, hook, None)) is not None
            and getattr(type(c), hook, None) is not noop
        ]


def resolve_mode(monitor: str, mode: str) -> str:
    """'auto' becomes 'min' for losses and errors, 'max' for scores."""
    if mode != "auto":
        return mode
    name = monitor.rsplit("/", 1)[-1]
    return "min" if any(word in name for word in LOWER_IS_BETTER) else "max"


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta``; NaN never improves."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


class EarlyStopping:
    """Stop when the monitored metric has not improved for ``patience`` epochs."""

    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float) -> None:
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode)
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.bad_epochs = 0

    def update(self, value: float) -> bool:
        """Record one epoch's value; True when training should stop."""
        if improved(value, self.best, self.mode, self.min_delta):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
