"""The four baselines on hand-checked series."""

from __future__ import annotations

import numpy as np
import pytest

from mlsmith.forecasting.baselines import drift, naive, seasonal_naive, window_average


def test_each_baseline_on_a_short_series() -> None:
    history = np.array([1.0, 3.0, 2.0, 6.0])
    assert naive(history, 3).tolist() == [6.0, 6.0, 6.0]
    assert seasonal_naive(history, 5, 2).tolist() == [2.0, 6.0, 2.0, 6.0, 2.0]
    assert drift(history, 2).tolist() == pytest.approx([6.0 + 5 / 3, 6.0 + 10 / 3])
    assert window_average(history, 2, 2).tolist() == [4.0, 4.0]
    assert window_average(history, 1, 12).tolist() == [3.0]  # shorter than a season: all of it


def test_short_histories_fall_back_rather_than_fail() -> None:
    one = np.array([5.0])
    assert seasonal_naive(one, 2, 12).tolist() == [5.0, 5.0]  # less than a season: naive
    assert drift(one, 2).tolist() == [5.0, 5.0]


@pytest.mark.parametrize("bad", [np.array([]), np.array([1.0, np.nan]), np.ones((2, 2))])
def test_bad_histories_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        naive(bad, 1)
