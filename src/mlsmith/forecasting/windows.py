"""Rolling-origin backtest windows: the last ``windows`` windows of ``horizon`` steps each.

Window ``j`` (0 the oldest) of a series of ``n`` observations ends its history at the cutoff
``n - horizon - (windows - 1 - j) * step`` and asks for the ``horizon`` values after it. A model
sees ``y[:cutoff]`` only, never ``y[cutoff:]``: that is the whole guarantee, and
:func:`history_and_truth` is the one place that slices a series for a window. Windows are cut
from each series' own end, as StatsForecast's ``cross_validation`` cuts them. The last window is
the test split; the ones before it validate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """One backtest window of one series: its history is ``y[:cutoff]``, its truth the
    ``horizon`` values from ``cutoff`` on."""

    index: int  # 0 for the oldest window
    cutoff: int
    horizon: int


def backtest_windows(n: int, horizon: int, windows: int, step: int | None = None) -> list[Window]:
    """The windows of a series of ``n`` observations, oldest first.

    ``step`` (default ``horizon``) is how far the cutoff moves between windows. A series too
    short to leave at least one observation of history before the oldest window is a
    ``ValueError`` naming what it would need.
    """
    step = horizon if step is None else step
    if horizon < 1 or windows < 1 or step < 1:
        raise ValueError(
            f"horizon, windows and step must be at least 1, got {horizon}, {windows}, {step}"
        )
    first = n - horizon - (windows - 1) * step
    if first < 1:
        need = horizon + (windows - 1) * step + 1
        raise ValueError(
            f"a series of {n} observations is too short for {windows} window(s) of horizon "
            f"{horizon} (step {step}): it needs at least {need}"
        )
    return [Window(j, first + j * step, horizon) for j in range(windows)]


def history_and_truth(y: np.ndarray, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """What a model may see for ``window`` (a copy, so nothing can write into the future) and
    the values it is scored against."""
    y = np.asarray(y)
    return y[: window.cutoff].copy(), y[window.cutoff : window.cutoff + window.horizon]
