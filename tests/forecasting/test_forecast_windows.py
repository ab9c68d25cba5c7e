"""Backtest windows: where they fall, and that no window can see its own future."""

from __future__ import annotations

import numpy as np
import pytest

from mlsmith.forecasting.baselines import BASELINES
from mlsmith.forecasting.windows import Window, backtest_windows, history_and_truth


def test_windows_end_at_the_series_end_and_step_back_by_step() -> None:
    assert [w.cutoff for w in backtest_windows(20, horizon=3, windows=2)] == [14, 17]
    assert [w.cutoff for w in backtest_windows(20, horizon=3, windows=3, step=1)] == [15, 16, 17]
    last = backtest_windows(20, horizon=3, windows=2)[-1]
    _, truth = history_and_truth(np.arange(20), last)
    assert truth.tolist() == [17, 18, 19]  # the test window is the series' last H values


def test_a_series_too_short_for_the_windows_is_refused_with_what_it_needs() -> None:
    assert backtest_windows(7, horizon=3, windows=2)[0].cutoff == 1  # one value of history
    with pytest.raises(ValueError, match="needs at least 7"):
        backtest_windows(6, horizon=3, windows=2)
    with pytest.raises(ValueError, match="at least 1"):
        backtest_windows(10, horizon=0, windows=1)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_no_window_sees_its_own_future(name: str) -> None:
    """Leakage test: on a strictly increasing series every value tells its position, so a
    history holding any value at or after the cutoff would show; and a forecaster writing into
    its history must not reach the series (or a later window's truth)."""
    y = np.arange(40, dtype=np.float64)
    original = y.copy()
    for window in backtest_windows(len(y), horizon=4, windows=5, step=2):
        history, truth = history_and_truth(y, window)
        assert len(history) == window.cutoff and history.max() < truth.min()
        assert truth[0] == window.cutoff  # the first value after the cutoff, nothing skipped
        forecast = BASELINES[name](history, window.horizon, 4)
        assert forecast.shape == (window.horizon,)
        history[:] = 1e9  # a model scribbling on what it was given
    np.testing.assert_array_equal(y, original)


def test_a_window_that_could_see_its_future_is_caught() -> None:
    """The check above fails on a window whose history reaches past its cutoff."""
    y = np.arange(10, dtype=np.float64)
    leaky = Window(index=0, cutoff=6, horizon=2)
    history = y[: leaky.cutoff + 1]  # one value too many
    _, truth = history_and_truth(y, leaky)
    assert not history.max() < truth.min()
