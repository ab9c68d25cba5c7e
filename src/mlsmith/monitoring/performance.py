"""Live performance: the logged answers scored on the labels that came back.

Labels join the log on ``request_id`` and ``row``; a label whose request is not in the log is
counted, not scored. Metrics are :mod:`mlsmith.evaluation`'s, with 95% bootstrap intervals,
compared with the package's held-out metrics (``reference.json`` carries the run's test
metrics). The headline is accuracy for classification and RMSE for regression; it has degraded
when, over at least ``min_rows`` labelled rows, the whole interval is worse than the held-out
value by more than ``max_metric_drop`` (accuracy points; for RMSE a relative increase).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.errors import DataError
from mlsmith.monitoring.logs import LABEL, OUTPUT, REQUEST_ID, ROW, VARIANT
from mlsmith.runtime.outputs import Decoder
from mlsmith.runtime.tabular import category_keys

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.config.monitor import MonitorConfig

# What the monitor reports, out of everything mlsmith.evaluation computes.
CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "roc_auc")
REGRESSION_METRICS = ("rmse", "mae")


@dataclass
class Performance:
    """Live metrics on labelled rows, against the package's held-out ones."""

    rows: int
    unmatched: int
    headline: str
    metrics: dict[str, dict[str, Any]]
    held_out: dict[str, dict[str, Any]]
    held_out_split: str | None
    degraded: bool
    judged: bool
    by_variant: dict[str, dict[str, Any]] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "unmatched_labels": self.unmatched,
            "headline": self.headline,
            "metrics": self.metrics,
            "held_out": self.held_out,
            "held_out_split": self.held_out_split,
            "degraded": self.degraded,
            "judged": self.judged,
            "by_variant": self.by_variant,
            "note": self.note,
        }


def live_performance(
    log: pd.DataFrame,
    labels: pd.DataFrame,
    decoder: Decoder,
    held_out: dict[str, Any],
    config: MonitorConfig,
    source: str | Path,
) -> Performance:
    """Score the logged answers on ``labels`` (see :func:`mlsmith.monitoring.logs.read_labels`)
    from the file ``source``."""
    joined = log.merge(labels, on=[REQUEST_ID, ROW], how="inner", validate="one_to_one")
    unmatched = len(labels) - len(joined)
    if not len(joined):
        raise DataError(
            f"{source}: none of its {len(labels)} labels matches a logged request "
            f"({REQUEST_ID} and {ROW}); is it feedback for this log?"
        )
    kind = decoder.kind
    names: tuple[str, ...]
    if kind == "regression":
        truth, outputs = _regression(joined, source)
        names, headline = REGRESSION_METRICS, "rmse"
    else:
        truth, outputs = _classification(joined, decoder, source)
        names, headline = CLASSIFICATION_METRICS, "accuracy"
    from mlsmith.evaluation import evaluate_outputs  # scikit-learn: only when labels are scored

    scored = evaluate_outputs(
        kind, truth, outputs, n_resamples=config.bootstrap, seed=0, threshold=decoder.threshold
    )
    metrics = {name: scored[name] for name in names if name in scored}
    reference = dict(held_out.get("metrics") or {})
    recorded = (reference.get(headline) or {}).get("value") is not None
    judged = len(joined) >= config.min_rows and recorded
    degraded = judged and _degraded(headline, metrics[headline], reference[headline], config)
    note = ""
    if len(joined) < config.min_rows:
        note = f"{len(joined)} labelled rows, fewer than min_rows={config.min_rows}: not judged"
    elif not judged:
        note = "the package records no held-out metrics to compare with: not judged"
    return Performance(
        rows=len(joined),
        unmatched=unmatched,
        headline=headline,
        metrics=metrics,
        held_out={name: reference[name] for name in names if name in reference},
        held_out_split=held_out.get("split"),
        degraded=degraded,
        judged=judged,
        by_variant=_by_variant(joined, kind, truth, outputs, headline, decoder.threshold),
        note=note,
    )


def _degraded(
    headline: str, live: dict[str, Any], held_out: dict[str, Any], config: MonitorConfig
) -> bool:
    """The whole live interval (the value without one) is worse than held-out by the margin."""
    value, (low, high) = live.get("value"), live.get("ci95") or (None, None)
    reference = float(held_out["value"])
    if value is None:
        return False
    if headline == "rmse":
        best = low if low is not None else value
        return bool(best > reference * (1.0 + config.max_metric_drop))
    best = high if high is not None else value
    return bool(best < reference - config.max_metric_drop)


def _classification(
    joined: pd.DataFrame, decoder: Decoder, source: str | Path
) -> tuple[np.ndarray, np.ndarray]:
    """Class indices of the labels, and the logged probabilities in the decoder's class order."""
    import pandas as pd

    keys = [str(k) for k in category_keys(pd.Series(decoder.classes))]
    index = {key: i for i, key in enumerate(keys)}
    # Labels match classes as text (1, 1.0 and "1" agree), then without case (true / True).
    folded = {key.lower(): i for i, key in reversed(list(enumerate(keys)))}
    truth = np.empty(len(joined), dtype=np.int64)
    for i, key in enumerate(category_keys(joined[LABEL])):
        found = index.get(key, folded.get(str(key).lower()))
        if found is None:
            raise DataError(
                f"{source}: label {key!r} is not one of the package's classes ({', '.join(keys)})"
            )
        truth[i] = found
    columns = [f"{OUTPUT}proba_{c}" for c in decoder.classes]
    missing = [c for c in columns if c not in joined.columns]
    if missing:
        raise DataError(
            f"the prediction log has no '{missing[0]}' column: it was not written for this "
            "package's classes"
        )
    proba = joined[columns].to_numpy(dtype=np.float64)
    if np.isnan(proba).any():
        raise DataError(f"{source}: some labelled rows have no logged probabilities")
    return truth, proba


def _regression(joined: pd.DataFrame, source: str | Path) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    truth = pd.to_numeric(joined[LABEL], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(truth)
    if bad.any():
        raise DataError(
            f"{source}: label {joined[LABEL].iloc[int(np.flatnonzero(bad)[0])]!r} is not a "
            "finite number, as a regression label must be"
        )
    column = f"{OUTPUT}prediction"
    if column not in joined.columns:
        raise DataError(f"the prediction log has no '{column}' column")
    return truth, joined[column].to_numpy(dtype=np.float64)


def _by_variant(
    joined: pd.DataFrame,
    kind: str,
    truth: np.ndarray,
    outputs: np.ndarray,
    headline: str,
    threshold: float | None = None,
) -> dict[str, dict[str, Any]]:
    """The headline per variant (point values: the split is for comparison, not a verdict),
    with the monitored package's decision threshold."""
    from mlsmith.evaluation import evaluate_outputs

    if VARIANT not in joined.columns or joined[VARIANT].nunique() < 2:
        return {}
    out: dict[str, dict[str, Any]] = {}
    variants = joined[VARIANT].astype(str).to_numpy()
    for name in sorted(set(variants)):
        mask = variants == name
        scored = evaluate_outputs(
            kind, truth[mask], outputs[mask], n_resamples=0, threshold=threshold
        )
        value = scored.get(headline, {}).get("value")
        out[name] = {"rows": int(mask.sum()), headline: value}
    return out
