"""Learning-to-rank metrics per query, with bootstrap confidence intervals over queries.

The unit of a ranking test set is the query (``data.group_column``): the items of one query are
ranked against each other, never against another query's. So every metric is computed per query
and then averaged over queries, and a bootstrap resample draws queries (with all their items),
not rows. Metric keys are MLflow-safe (``ndcg_10``, not ``ndcg@10``).

Conventions, as LightGBM's and XGBoost's evaluations have them unless said otherwise:

* Items are ranked by descending score; tied scores keep the items' input order (a stable sort,
  as LightGBM's), so the figures are deterministic and match LightGBM's ``ndcg@k``.
* NDCG@k uses the exponential gain ``2**relevance - 1`` and the discount ``1 / log2(rank + 1)``,
  normalised by the ideal ordering's DCG@k. A query shorter than k counts all its items.
* MRR is the reciprocal rank of the first relevant item (relevance > 0); MAP the mean over
  queries of average precision with relevance > 0 as relevant.
* A query without any relevant item has no defined NDCG, MRR or AP: it is left out of the means
  (LightGBM counts it as NDCG 1, which flatters a model on data with many such queries). A metric
  defined for no query is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mlsmith.evaluation import json_number, mean_defined, ratio_interval

DEFAULT_KS = (1, 5, 10)


def metric_names(ks: Sequence[int] = DEFAULT_KS) -> tuple[str, ...]:
    """The keys :func:`ranking_metrics` returns, in order."""
    return (*(f"ndcg_{k}" for k in ks), "mrr", "map")


def query_slices(groups: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each query's row positions, in order of first appearance: (query ids, positions)."""
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(f"groups must be one-dimensional, got shape {groups.shape}")
    ids, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # queries in the order they appear
    rows = np.argsort(inverse, kind="stable")  # rows of query 0, then 1, ... (input order kept)
    bounds = np.cumsum(np.bincount(inverse, minlength=len(ids)))
    pieces = np.split(rows, bounds[:-1])
    return ids[order], [pieces[i] for i in order]


def per_query_metrics(
    relevance: np.ndarray,
    scores: np.ndarray,
    groups: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, np.ndarray]:
    """Every metric for each query (NaN where undefined), queries in order of first appearance."""
    relevance, scores = _check(relevance, scores, groups)
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be at least 1, got {list(ks)}")
    _, slices = query_slices(groups)
    values = {name: np.full(len(slices), math.nan) for name in metric_names(ks)}
    for q, rows in enumerate(slices):
        rel = relevance[rows]
        if not (rel > 0).any():
            continue
        ranked = rel[np.argsort(-scores[rows], kind="stable")]
        gains = np.exp2(ranked) - 1.0
        ideal = np.exp2(np.sort(rel)[::-1]) - 1.0
        discounts = 1.0 / np.log2(np.arange(2, len(rel) + 2))
        for k in ks:
            values[f"ndcg_{k}"][q] = (gains[:k] @ discounts[:k]) / (ideal[:k] @ discounts[:k])
        hits = ranked > 0
        positions = np.flatnonzero(hits) + 1.0
        values["mrr"][q] = 1.0 / positions[0]
        values["map"][q] = float(np.mean(np.arange(1, len(positions) + 1) / positions))
    return values


def ranking_metrics(
    relevance: np.ndarray,
    scores: np.ndarray,
    groups: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """NDCG@k for each k, MRR and MAP: means over the queries where each is defined."""
    per_query = per_query_metrics(relevance, scores, groups, ks)
    return {name: float(mean_defined(values[np.newaxis])[0]) for name, values in per_query.items()}


def evaluate_ranking(
    relevance: np.ndarray,
    scores: np.ndarray,
    groups: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float | list[float | None] | None]]:
    """Point values and percentile-bootstrap intervals over queries, in the shape
    :func:`mlsmith.evaluation.evaluate_outputs` gives (``{"ndcg_10": {"value": .., "ci95":
    [.., ..]}}``, NaN as None; no interval with ``n_resamples == 0``)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    per_query = per_query_metrics(relevance, scores, groups, ks)
    report: dict[str, dict[str, float | list[float | None] | None]] = {}
    for name, values in per_query.items():
        mean, interval = _query_mean(values, n_resamples, confidence, seed)
        report[name] = {"value": mean} if interval is None else {"value": mean, "ci95": interval}
    return report


def paired_ranking_differences(
    relevance: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    groups: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float | list[float | None] | None]]:
    """Every metric of two rankers on the same queries, in the shape
    :func:`mlsmith.evaluation.paired_differences` gives: ``{metric: {"value": a - b, "ci95":
    [..], "a": a, "b": b}}``. The interval is the paired bootstrap over queries: each resample
    scores both rankers on the same queries, so what the queries share cancels out."""
    per_a = per_query_metrics(relevance, scores_a, groups, ks)
    per_b = per_query_metrics(relevance, scores_b, groups, ks)
    report: dict[str, dict[str, float | list[float | None] | None]] = {}
    for name, values_a in per_a.items():
        # Whether a query counts depends on its labels alone: the same queries for both, so
        # the mean of the differences is the difference of the means.
        difference, interval = _query_mean(values_a - per_b[name], n_resamples, confidence, seed)
        entry: dict[str, float | list[float | None] | None] = {
            "value": difference,
            "a": _query_mean(values_a, 0, confidence, seed)[0],
            "b": _query_mean(per_b[name], 0, confidence, seed)[0],
        }
        if interval is not None:
            entry["ci95"] = interval
        report[name] = entry
    return report


def _query_mean(
    values: np.ndarray, n_resamples: int, confidence: float, seed: int
) -> tuple[float | None, list[float | None] | None]:
    """The mean over the queries where ``values`` is defined (not NaN), and its percentile
    bootstrap interval over queries (None without resamples); JSON-ready numbers."""
    mean = json_number(float(mean_defined(values[np.newaxis])[0]))
    if n_resamples <= 0:
        return mean, None
    bounds = ratio_interval(
        np.nan_to_num(values),
        (~np.isnan(values)).astype(np.float64),
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
    )
    return mean, [json_number(bound) for bound in bounds]


def _check(
    relevance: np.ndarray, scores: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    relevance = np.asarray(relevance, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if not (relevance.ndim == scores.ndim == 1 and len(relevance) == len(scores) == len(groups)):
        raise ValueError(
            "relevance, scores and groups must be one-dimensional and of one length, got "
            f"{relevance.shape}, {scores.shape} and {np.shape(groups)}"
        )
    if np.isnan(relevance).any() or (relevance < 0).any():
        raise ValueError("relevance labels must be non-negative numbers")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return relevance, scores
