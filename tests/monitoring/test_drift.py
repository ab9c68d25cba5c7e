"""Reference statistics, PSI and the server's sliding window, on frames (no model needed)."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
from tests.conftest import make_table

from mlsmith.config.monitor import MonitorConfig
from mlsmith.errors import DataError
from mlsmith.monitoring.drift import judge
from mlsmith.runtime.drift import OTHER, DriftWindow, Reference, psi

NUMERIC, CATEGORICAL = ["x1", "x2", "size"], ["color"]


def _reference(rows: int = 2000, seed: int = 0) -> Reference:
    train = make_table("binary", rows=rows, seed=seed)
    return Reference.fit(
        train,
        pd.DataFrame({"prediction": train["label"]}),
        numeric=NUMERIC,
        categorical=CATEGORICAL,
        classes=["no", "yes"],
    )


def _predictions(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"prediction": frame["label"]})


def test_psi_is_zero_for_identical_shares_and_large_for_a_shift() -> None:
    assert psi([0.25, 0.25, 0.5], [0.25, 0.25, 0.5]) == 0.0
    assert psi([0.5, 0.5, 0.0], [0.5, 0.5, 0.0]) == 0.0  # an empty bin on both sides
    assert 0.0 < psi([0.5, 0.5], [0.55, 0.45]) < 0.05
    assert psi([0.5, 0.5], [0.9, 0.1]) > 0.5
    assert psi([1.0, 0.0], [0.0, 1.0]) > 5.0  # finite, thanks to the epsilon floor
    rows = psi(np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([[0.5, 0.5], [0.9, 0.1]]))
    assert rows.shape == (2,) and rows[0] == 0.0 and rows[1] > 0.5


def test_reference_bins_survive_json_and_describe_the_training_data() -> None:
    reference = _reference()
    again = Reference.from_json(reference.to_json())
    assert [f.name for f in again.features] == ["x1", "x2", "size", "color"]
    x1, x2, _, color = again.features
    assert len(x1.edges) == 9 and x1.n_bins == 11  # deciles, and the missing bin
    np.testing.assert_allclose(x1.shares[:10], 0.1, atol=0.01)
    assert x2.shares[-1] == pytest.approx(0.05, abs=0.015)  # the table's 5% gaps
    assert sorted(color.categories) == ["blue", "green", "red"] and color.labels[-1] == OTHER
    assert again.prediction is not None and again.prediction.categories == ["no", "yes"]
    frame = make_table("binary", rows=50, seed=9)
    np.testing.assert_array_equal(again.feature_bins(frame), reference.feature_bins(frame))
    with pytest.raises(DataError, match="'color' not found"):
        again.feature_bins(frame.drop(columns="color"))


def test_the_window_gives_small_psi_for_fresh_rows_and_large_for_shifted_ones() -> None:
    reference = _reference()
    window = DriftWindow(reference, window=400)
    assert np.isnan(window.psi_by_feature()["x1"])
    fresh = make_table("binary", rows=400, seed=1)
    for start in range(0, 400, 7):  # requests of a few rows, as a server sees them
        part = fresh.iloc[start : start + 7]
        window.update(part, _predictions(part))
    assert window.rows == 400
    assert max(window.psi_by_feature().values()) < 0.1
    assert window.prediction_psi() < 0.1

    shifted = make_table("binary", rows=400, seed=2)
    shifted["x1"] += 1.0
    for start in range(0, 400, 50):
        part = shifted.iloc[start : start + 50]
        window.update(part, _predictions(part))
    # The fresh rows have all left the window: it now sees only the shifted ones.
    alone = DriftWindow(reference, window=400)
    alone.update(shifted, _predictions(shifted))
    assert window.psi_by_feature() == pytest.approx(alone.psi_by_feature())
    assert window.psi_by_feature()["x1"] > 0.5
    assert window.psi_by_feature()["color"] < 0.1


def test_the_window_counts_stay_exact_under_concurrent_updates() -> None:
    reference = _reference(rows=500)
    rows = make_table("binary", rows=40, seed=3)
    window = DriftWindow(reference, window=10_000)

    def feed() -> None:
        for _ in range(25):
            window.update(rows, _predictions(rows))

    threads = [threading.Thread(target=feed) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert window.rows == 4 * 25 * 40
    single = DriftWindow(reference, window=10_000)
    single.update(rows, _predictions(rows))
    assert window.psi_by_feature() == pytest.approx(single.psi_by_feature())


def test_a_feature_drifts_only_when_psi_and_the_test_both_say_so() -> None:
    reference = _reference()
    x1, color = reference.features[0], reference.features[3]
    config = MonitorConfig()
    fresh = make_table("binary", rows=600, seed=4)
    assert not judge(x1, fresh["x1"], config).drifted
    shifted = judge(x1, fresh["x1"] + 1.0, config)
    assert shifted.drifted and shifted.psi > 0.2 and shifted.p_value < 1e-6
    # A large PSI on too few rows is not trusted: min_rows.
    assert not judge(x1, fresh["x1"].head(20) + 1.0, config).drifted
    # A tiny real shift on many rows: the test is sure, the PSI says it does not matter.
    many = make_table("binary", rows=20_000, seed=5)
    slight = judge(x1, many["x1"] + 0.1, config)
    assert slight.p_value < 0.01 and not slight.drifted
    # A category's frequency doubled.
    doubled = fresh["color"].copy()
    others = np.flatnonzero(doubled.to_numpy() != "red")
    n_red = int((doubled == "red").sum())
    doubled.iloc[np.random.default_rng(0).choice(others, size=n_red, replace=False)] = "red"
    verdict = judge(color, doubled, config)
    assert verdict.drifted and verdict.test == "chi-square"
    # A column gone missing is drift too (the chi-square test sees the missing bin).
    assert judge(x1, pd.Series([np.nan] * 600, name="x1"), config).drifted


def test_text_length_and_regression_predictions_are_binned_as_numbers() -> None:
    rng = np.random.default_rng(0)
    words = np.array(["good", "bad", "very", "fine", "movie"])
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 12))) for _ in range(500)]
    frame = pd.DataFrame({"review": texts})
    values = pd.DataFrame({"prediction": rng.normal(10.0, 2.0, size=500)})
    reference = Reference.from_json(
        Reference.fit(frame, values, kind="text", text=["review"]).to_json()
    )
    assert [f.name for f in reference.features] == ["review (length)"]
    assert reference.prediction is not None and reference.prediction.type == "numeric"
    window = DriftWindow(reference, window=500)
    window.update(frame, values)
    assert window.psi_by_feature()["review (length)"] == pytest.approx(0.0, abs=1e-9)
    longer = frame.assign(review=frame["review"] + " and then some more words")
    window.update(longer, values + 5.0)
    assert window.psi_by_feature()["review (length)"] > 1.0
    assert window.prediction_psi() > 1.0


def test_an_image_package_window_follows_the_predictions_only() -> None:
    labels = pd.DataFrame({"prediction": ["cat"] * 60 + ["dog"] * 40})
    reference = Reference.fit(
        pd.DataFrame(index=range(100)), labels, kind="image", classes=["cat", "dog"]
    )
    window = DriftWindow(reference, window=100)
    window.update(pd.DataFrame({"path": [b"png"] * 100}), labels[::-1])
    assert window.psi_by_feature() == {}
    assert window.prediction_psi() == pytest.approx(0.0)
    # 80 dogs push out the oldest 80 rows (40 dogs, 40 cats): 20% cats now, 60% in training.
    dogs = pd.DataFrame({"prediction": ["dog"] * 80})
    window.update(pd.DataFrame({"path": [b"png"] * 80}), dogs)
    assert window.prediction_psi() == pytest.approx(psi([0.6, 0.4, 0.0], [0.2, 0.8, 0.0]))


def test_numpy_columns_bin_exactly_as_the_frame_they_make() -> None:
    """The server bins a request's numpy columns without pandas: the same bins as the frame
    they make, with missing values, infinities, float32 and int columns and unseen categories."""
    reference = _reference()
    frame = make_table("binary", rows=300, seed=5)
    columns = {name: frame[name].to_numpy() for name in NUMERIC}
    columns["x1"] = columns["x1"].copy()
    columns["x1"][:3] = [np.nan, np.inf, -np.inf]
    columns["x2"] = columns["x2"].astype(np.float32)
    columns["size"] = np.nan_to_num(columns["size"]).astype(np.int64)
    columns["color"] = np.array(["red", "mauve", None] * 100, dtype=object)
    expected = reference.feature_bins(pd.DataFrame(columns))
    assert np.array_equal(reference.feature_bins(columns), expected)
    # red has its bin; unseen and missing categories share the "other" bin.
    assert set(expected[:, 3].tolist()) == {reference.features[3].categories.index("red"), 3}
    assert set(expected[:3, 0].tolist()) == {reference.features[0].n_bins - 1}  # nan, +-inf
