"""Whether a feature (or the prediction) has drifted: PSI and a two-sample test, judged together.

Each feature of the logged rows is binned with the package's reference bins
(:mod:`mlsmith.runtime.drift`), so the PSI here is the one the server exports. The test:

* categorical features and class predictions: a chi-square test of homogeneity between the
  training counts and the logged counts per bin (bins empty on both sides left out);
* numeric features and regression predictions: the two-sample Kolmogorov-Smirnov test of the
  logged values against the reference's sample of training values, and the chi-square test on
  the bins (which also sees a change in the share of missing values); the p-value is the
  smaller of the two, doubled (Bonferroni), at most 1.

A feature drifts when there are at least ``min_rows`` rows, its PSI exceeds ``psi_threshold``
and its p-value is below ``p_value`` (see :mod:`mlsmith.config.monitor` for why both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.runtime.drift import NUMERIC, FeatureStats, psi

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.config.monitor import MonitorConfig

KS, CHI_SQUARE = "KS", "chi-square"


@dataclass
class FeatureDrift:
    """One feature's drift verdict, with what it was judged on."""

    name: str
    type: str
    rows: int
    psi: float
    test: str
    p_value: float
    drifted: bool
    labels: list[str]
    expected: list[float]  # training share per bin
    actual: list[float]  # logged share per bin

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (no NaN)."""
        return {
            "name": self.name,
            "type": self.type,
            "rows": self.rows,
            "psi": _finite(self.psi),
            "test": self.test,
            "p_value": _finite(self.p_value),
            "drifted": self.drifted,
            "bins": [
                {"bin": label, "expected": round(e, 6), "actual": round(a, 6)}
                for label, e, a in zip(self.labels, self.expected, self.actual, strict=True)
            ],
        }


def judge(stats: FeatureStats, column: pd.Series, config: MonitorConfig) -> FeatureDrift:
    """The drift verdict of one feature (or the prediction) over the logged values ``column``."""
    bins = stats.bins(column)
    counts = np.bincount(bins, minlength=stats.n_bins)
    rows = int(counts.sum())
    actual = counts / rows if rows else np.zeros(stats.n_bins)
    expected = stats.shares
    value = psi(expected, actual) if rows else math.nan
    p_chi = chi_square_p_value(stats.counts, counts)
    if stats.type == NUMERIC:
        values = stats.values(column)
        p_ks = ks_p_value(stats.sample, values[~np.isnan(values)])
        p_value, test = min(1.0, 2.0 * min(p_ks, p_chi)), f"{KS} + {CHI_SQUARE}"
    else:
        p_value, test = p_chi, CHI_SQUARE
    drifted = rows >= config.min_rows and value > config.psi_threshold and p_value < config.p_value
    return FeatureDrift(
        name=stats.name,
        type=stats.type,
        rows=rows,
        psi=float(value),
        test=test,
        p_value=float(p_value),
        drifted=bool(drifted),
        labels=stats.labels,
        expected=[float(v) for v in expected],
        actual=[float(v) for v in actual],
    )


def chi_square_p_value(expected_counts: np.ndarray, actual_counts: np.ndarray) -> float:
    """p-value of the chi-square test that two histograms over the same bins come from one
    distribution (1.0 when either is empty or only one bin is used)."""
    table = np.stack([np.asarray(expected_counts), np.asarray(actual_counts)]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 1.0
    # No Yates correction: it is for 2x2 tables of small counts and only blunts the test here.
    return float(_scipy_stats().chi2_contingency(table, correction=False).pvalue)


def ks_p_value(reference: np.ndarray | None, values: np.ndarray) -> float:
    """p-value of the two-sample Kolmogorov-Smirnov test (1.0 when either side is empty)."""
    if reference is None or not len(reference) or not len(values):
        return 1.0
    return float(_scipy_stats().ks_2samp(reference, values).pvalue)


def _scipy_stats() -> Any:
    # SciPy comes with scikit-learn; imported here, where the tests run, not at start-up.
    # Typed or not depending on the SciPy release (scipy-stubs): either is fine here.
    import scipy.stats  # type: ignore[import-untyped, unused-ignore]

    return scipy.stats


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
