"""Ranking metrics: hand-computed cases, LightGBM's own NDCG, and intervals over queries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlsmith.ranking_metrics import (
    evaluate_ranking,
    metric_names,
    per_query_metrics,
    query_slices,
    ranking_metrics,
)
from mlsmith.runtime.outputs import ranks_within


def test_a_hand_computed_query() -> None:
    """Scores rank the items [rel 0, rel 2, rel 1]; the ideal order is [2, 1, 0]."""
    relevance = np.array([2.0, 0.0, 1.0])
    scores = np.array([0.5, 0.9, 0.1])
    groups = np.zeros(3)
    got = ranking_metrics(relevance, scores, groups, ks=(1, 2, 3))
    dcg = [0.0, 3.0 / math.log2(3), 1.0 / math.log2(4)]  # gains 0, 3, 1 at ranks 1-3
    ideal = [3.0, 1.0 / math.log2(3), 0.0]
    assert got["ndcg_1"] == pytest.approx(0.0)
    assert got["ndcg_2"] == pytest.approx(sum(dcg[:2]) / sum(ideal[:2]))
    assert got["ndcg_3"] == pytest.approx(sum(dcg) / sum(ideal))
    assert got["mrr"] == pytest.approx(1 / 2)  # the first relevant item is second
    assert got["map"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # relevant at ranks 2 and 3


def test_a_perfect_ranking_scores_one_and_queries_are_averaged() -> None:
    relevance = np.array([3, 1, 0, 0, 1, 2], dtype=float)
    groups = np.array(["a", "a", "a", "b", "b", "b"])
    perfect = ranking_metrics(relevance, relevance, groups)
    assert all(v == pytest.approx(1.0) for v in perfect.values())
    reversed_b = np.array([3, 1, 0, 9, 8, 7], dtype=float)  # query b ranked worst first
    per_query = per_query_metrics(relevance, reversed_b, groups)
    mixed = ranking_metrics(relevance, reversed_b, groups)
    for name in metric_names():
        assert per_query[name][0] == pytest.approx(1.0)
        assert per_query[name][1] < 1.0
        assert mixed[name] == pytest.approx(np.mean(per_query[name]))


def test_queries_without_relevant_items_are_left_out_and_ties_keep_input_order() -> None:
    relevance = np.array([0, 0, 1, 0], dtype=float)
    groups = np.array([7, 7, 3, 3])
    got = per_query_metrics(relevance, np.zeros(4), groups)
    assert math.isnan(got["ndcg_10"][0])  # query 7: nothing relevant
    assert got["mrr"][1] == pytest.approx(1.0)  # tied: the relevant item came first
    assert ranking_metrics(np.zeros(2), np.zeros(2), np.zeros(2))["map"] != 0.0  # NaN
    assert math.isnan(ranking_metrics(np.zeros(2), np.zeros(2), np.zeros(2))["map"])


def test_ndcg_matches_lightgbm() -> None:
    """LightGBM's ndcg@k for queries that each hold a relevant item (it counts the others as 1),
    ties among a few-round booster's scores included: both keep tied items in input order."""
    lightgbm = pytest.importorskip("lightgbm")
    rng = np.random.default_rng(0)
    sizes = rng.integers(3, 15, size=40)
    groups = np.repeat(np.arange(40), sizes)
    x = rng.normal(size=(len(groups), 5))
    relevance = np.clip(np.round(x[:, 0] + rng.normal(scale=0.7, size=len(groups))), 0, 3)
    for q in range(40):  # one relevant item at least, per query
        relevance[np.flatnonzero(groups == q)[0]] = max(relevance[groups == q].max(), 1)
    train = lightgbm.Dataset(x, relevance, group=sizes)
    booster = lightgbm.train(
        {"objective": "lambdarank", "metric": "ndcg", "eval_at": [1, 5, 10], "verbose": -1},
        train,
        num_boost_round=5,
        valid_sets=[train],
        callbacks=[lightgbm.record_evaluation(record := {})],
    )
    scores = booster.predict(x)
    ours = ranking_metrics(relevance, scores, groups)
    for k in (1, 5, 10):
        assert ours[f"ndcg_{k}"] == pytest.approx(record["training"][f"ndcg@{k}"][-1], abs=1e-6)


def test_intervals_resample_queries_and_bracket_the_value() -> None:
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(60), 8)
    relevance = rng.integers(0, 3, size=len(groups)).astype(float)
    scores = relevance + rng.normal(scale=1.5, size=len(groups))
    report = evaluate_ranking(relevance, scores, groups, n_resamples=300, seed=3)
    assert list(report) == ["ndcg_1", "ndcg_5", "ndcg_10", "mrr", "map"]
    for entry in report.values():
        low, high = entry["ci95"]  # type: ignore[misc]
        assert low < entry["value"] < high  # type: ignore[operator]
    again = evaluate_ranking(relevance, scores, groups, n_resamples=300, seed=3)
    assert again == report
    # One query repeated is no new evidence: the interval of one query is a point.
    single = evaluate_ranking(relevance[:8], scores[:8], groups[:8], n_resamples=50)
    low, high = single["map"]["ci95"]  # type: ignore[misc]
    assert low == high == single["map"]["value"]
    assert "ci95" not in evaluate_ranking(relevance, scores, groups, n_resamples=0)["mrr"]


def test_ranks_within_groups_and_query_order() -> None:
    groups = np.array(["q2", "q1", "q2", "q1", "q2"])
    scores = np.array([0.1, 5.0, 0.7, 5.0, 0.3])
    assert ranks_within(scores, groups).tolist() == [3, 1, 1, 2, 2]
    ids, slices = query_slices(groups)
    assert ids.tolist() == ["q2", "q1"]
    assert [s.tolist() for s in slices] == [[0, 2, 4], [1, 3]]


@pytest.mark.parametrize(
    ("relevance", "scores", "groups", "message"),
    [
        ([1.0, -1.0], [0.1, 0.2], [0, 0], "non-negative"),
        ([1.0, math.nan], [0.1, 0.2], [0, 0], "non-negative"),
        ([1.0, 0.0], [0.1, math.inf], [0, 0], "finite"),
        ([1.0, 0.0], [0.1], [0, 0], "one length"),
    ],
)
def test_bad_inputs_are_refused(
    relevance: list[float], scores: list[float], groups: list[int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ranking_metrics(np.array(relevance), np.array(scores), np.array(groups))


def test_paired_differences_are_over_the_same_queries() -> None:
    from mlsmith.ranking_metrics import paired_ranking_differences

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 8)
    relevance = rng.integers(0, 3, size=len(groups)).astype(float)
    good = relevance + rng.normal(scale=0.5, size=len(groups))
    bad = rng.normal(size=len(groups))
    result = paired_ranking_differences(relevance, good, bad, groups, (5,), n_resamples=300)
    a, b = (
        ranking_metrics(relevance, good, groups, (5,)),
        ranking_metrics(relevance, bad, groups, (5,)),
    )
    entry = result["ndcg_5"]
    assert entry["a"] == pytest.approx(a["ndcg_5"]) and entry["b"] == pytest.approx(b["ndcg_5"])
    assert entry["value"] == pytest.approx(a["ndcg_5"] - b["ndcg_5"])
    low, high = entry["ci95"]
    assert 0.0 < low <= entry["value"] <= high  # clearly better, paired over the 60 queries
    same = paired_ranking_differences(relevance, good, good, groups, (5,), n_resamples=100)
    assert same["ndcg_5"]["value"] == 0.0 and same["ndcg_5"]["ci95"] == [0.0, 0.0]
