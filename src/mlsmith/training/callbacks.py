"""The callback interface and early stopping.

Callbacks are duck-typed: the trainer calls ``on_fit_start``, ``on_train_step_end``,
``on_epoch_end``, ``on_fit_end`` and, when training fails, ``on_exception`` on whoever defines
them. :class:`Callback` gives no-op
defaults to subclass. A callback may set ``trainer.should_stop = True`` to end training after
the current epoch (tuning prunes trials this way).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlsmith.training.trainer import Trainer

LOWER_IS_BETTER = ("loss", "error", "mse", "rmse", "mae", "mape")


class Callback:
    """No-op base; override what you need."""

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_train_step_end(self, trainer: Trainer) -> None: ...

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...

    def on_exception(self, trainer: Trainer, error: BaseException) -> None: ...


class CallbackList:
    """Calls a hook on every callback that has it, in order."""

    def __init__(self, callbacks: Iterable[object]) -> None:
        self.callbacks = list(callbacks)

    def call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(*args)


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
