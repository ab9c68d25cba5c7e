"""The thresholds ``mlsmith monitor`` judges a prediction log by.

A feature (or the prediction) has drifted when, over at least ``min_rows`` logged rows, both
its PSI exceeds ``psi_threshold`` and its test against the training data gives a p-value below
``p_value``: PSI alone flags noise on small windows, a test alone flags shifts too small to
matter on large ones; together they flag shifts that are both real and large. Live performance
has degraded when, over at least ``min_rows`` labelled rows, its whole bootstrap interval is
worse than the package's held-out value by more than ``max_metric_drop``.
"""

from __future__ import annotations

from pydantic import Field

from mlsmith.config.base import Section


class MonitorConfig(Section):
    """Drift and degradation thresholds; exceeding any makes ``mlsmith monitor`` exit 1."""

    psi_threshold: float = Field(
        0.2, gt=0, description="PSI above which a shift counts as large (0.1-0.2 is moderate)"
    )
    p_value: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="test p-value below which a shift counts as real (KS for numbers, "
        "chi-square for categories and classes)",
    )
    min_rows: int = Field(
        100, ge=1, description="fewer logged (or labelled) rows than this: nothing is judged"
    )
    max_metric_drop: float = Field(
        0.05,
        ge=0,
        description="accuracy points lost (classification), or relative RMSE increase "
        "(regression), tolerated before live performance counts as degraded",
    )
    bootstrap: int = Field(
        1000, ge=0, description="resamples for the live metrics' 95% intervals (0: none)"
    )
