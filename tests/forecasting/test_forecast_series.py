"""Long-format tables to series: frequency and season inferred, bad timestamps named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsmith.errors import DataError
from mlsmith.runtime.series import read_series, season_length_of, too_short


def monthly(ids: tuple[str, ...] = ("a", "b"), periods: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frames = [
        pd.DataFrame(
            {
                "store": name,
                "month": pd.date_range("2020-01-01", periods=periods, freq="MS").strftime(
                    "%Y-%m-%d"
                ),
                "sales": rng.normal(100, 10, size=periods),
            }
        )
        for name in ids
    ]
    # Shuffled, as exports often are: the reader sorts each series by time.
    return pd.concat(frames).sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_series_are_split_sorted_and_their_frequency_and_season_inferred() -> None:
    frame = monthly()
    got = read_series(frame, time_column="month", target="sales", id_column="store")
    assert got.ids == ["a", "b"] and got.lengths == [30, 30]
    assert got.freq == "MS" and got.season_length == 12
    for name, times, values in zip(got.ids, got.times, got.values, strict=True):
        assert (np.diff(times) > np.timedelta64(0)).all()
        rows = frame[frame["store"] == name].sort_values("month")
        np.testing.assert_array_equal(values, rows["sales"].to_numpy())


def test_one_series_without_an_id_and_integer_periods() -> None:
    frame = pd.DataFrame({"t": [3, 1, 2, 4], "y": [3.0, 1.0, 2.0, 4.0]})
    got = read_series(frame, time_column="t", target="y")
    assert got.ids == ["series"] and got.freq is None and got.season_length == 1
    assert got.values[0].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert read_series(frame, time_column="t", target="y", season_length=2).season_length == 2


@pytest.mark.parametrize(
    ("freq", "season"), [("MS", 12), ("QS-OCT", 4), ("W-SUN", 52), ("D", 7), ("h", 24), ("YS", 1)]
)
def test_season_lengths_follow_the_frequency(freq: str, season: int) -> None:
    assert season_length_of(freq) == season


def test_duplicates_gaps_missing_values_and_bad_times_are_named() -> None:
    frame = monthly()
    duplicate = pd.concat([frame, frame.iloc[[0]]])
    with pytest.raises(DataError, match=r"series '.' has two rows for"):
        read_series(duplicate, time_column="month", target="sales", id_column="store")
    gap = frame[~((frame["store"] == "b") & (frame["month"] == "2020-06-01"))]
    with pytest.raises(DataError, match=r"series 'b' has 2020-07-01 00:00:00 where frequency"):
        read_series(gap, time_column="month", target="sales", id_column="store")
    missing = frame.copy()
    missing.loc[4, "sales"] = np.nan
    with pytest.raises(DataError, match="1 rows have no numeric value in 'sales'"):
        read_series(missing, time_column="month", target="sales", id_column="store")
    words = frame.assign(month="soon")
    with pytest.raises(DataError, match="neither whole numbers nor dates"):
        read_series(words, time_column="month", target="sales", id_column="store")
    periods = pd.DataFrame({"t": [1, 2, 4], "y": [1.0, 2.0, 3.0]})
    with pytest.raises(DataError, match="jumps from period 2 to 4"):
        read_series(periods, time_column="t", target="y")


def test_irregular_timestamps_ask_for_a_frequency() -> None:
    frame = pd.DataFrame(
        {"t": ["2024-01-01", "2024-01-03", "2024-01-04", "2024-01-09"], "y": [1.0, 2, 3, 4]}
    )
    with pytest.raises(DataError, match=r"set data\.freq"):
        read_series(frame, time_column="t", target="y")


def test_series_too_short_for_the_backtest_are_listed() -> None:
    frame = pd.concat([monthly(("long",), 40), monthly(("short",), 20)])
    got = read_series(frame, time_column="month", target="sales", id_column="store")
    # 3 windows of 6 months, step 6, plus a season of history: 30 values.
    assert too_short(got, horizon=6, windows=3, step=6) == ["short"]
