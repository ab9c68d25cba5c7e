"""Slice evaluation (``eval.slices``): the test split's metrics per value of a column.

Each listed column cuts the test rows into slices: one per category of a categorical column
(missing values are their own slice), one per quantile bin of a numeric column with more
distinct values than ``eval.slice_bins`` (bins from the test values, so each holds about as
many rows). Every slice gets the task's metrics with bootstrap intervals, as the whole split
does; a slice under ``eval.min_slice_rows`` rows is flagged ``too_small`` (its interval is too
wide to judge) and left out of the gap. The gap is the largest difference of the headline
metric (accuracy, or RMSE for a regression) between two judged slices of a column.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.evaluation import evaluate_outputs

if TYPE_CHECKING:
    import pandas as pd

SLICES_KEY = "slices"
MISSING = "(missing)"


@dataclass(frozen=True)
class SliceSettings:
    """How slices are cut and judged (from ``eval``)."""

    bins: int = 4
    min_rows: int = 30
    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0


def headline(kind: str) -> str:
    """The metric the gap between slices is measured on."""
    return "rmse" if kind == "regression" else "accuracy"


def slice_labels(values: pd.Series, bins: int) -> np.ndarray:
    """Each row's slice: its category as text, or its numeric quantile bin as ``[low, high]``."""
    import pandas as pd

    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if numeric and values.nunique(dropna=True) > bins:
        cut = pd.qcut(values, q=bins, duplicates="drop")
        labels = cut.astype(str).to_numpy(dtype=object)
    else:
        labels = values.astype(str).to_numpy(dtype=object)
    labels[values.isna().to_numpy()] = MISSING
    return labels


def slice_metrics(
    kind: str,
    truth: np.ndarray,
    outputs: np.ndarray,
    columns: Mapping[str, pd.Series],
    settings: SliceSettings,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Per column: every slice's rows and metrics, and the largest gap (see the module)."""
    name = headline(kind)
    report: dict[str, Any] = {}
    for column, values in columns.items():
        labels = slice_labels(values.reset_index(drop=True), settings.bins)
        slices: dict[str, Any] = {}
        for label in sorted(set(labels), key=str):
            mask = labels == label
            rows = int(mask.sum())
            metrics = evaluate_outputs(
                kind,
                truth[mask],
                outputs[mask],
                n_resamples=settings.n_resamples if rows >= 2 else 0,
                confidence=settings.confidence,
                seed=settings.seed,
                threshold=threshold,
            )
            slices[str(label)] = {
                "rows": rows,
                "too_small": rows < settings.min_rows,
                "metrics": metrics,
            }
        report[column] = {"metric": name, "slices": slices, "gap": _gap(slices, name)}
    return report


def _gap(slices: dict[str, Any], metric: str) -> dict[str, Any] | None:
    judged = {
        label: entry["metrics"][metric]["value"]
        for label, entry in slices.items()
        if not entry["too_small"]
        and isinstance(entry["metrics"].get(metric, {}).get("value"), int | float)
        and math.isfinite(entry["metrics"][metric]["value"])
    }
    if len(judged) < 2:
        return None
    best = max(judged, key=lambda k: judged[k])
    worst = min(judged, key=lambda k: judged[k])
    return {
        "value": judged[best] - judged[worst],
        "highest": best,
        "lowest": worst,
    }


def summary_lines(slices: dict[str, Any]) -> list[str]:
    """One line per sliced column, for the model card and the logs."""
    lines = []
    for column, entry in slices.items():
        small = [label for label, s in entry["slices"].items() if s["too_small"]]
        gap = entry.get("gap")
        text = f"'{column}': {len(entry['slices'])} slices"
        if gap is not None:
            text += (
                f"; {entry['metric']} ranges by {gap['value']:.3g} between '{gap['lowest']}' "
                f"and '{gap['highest']}'"
            )
        else:
            text += f"; fewer than two slices large enough to compare {entry['metric']}"
        if small:
            text += f"; too few rows to judge: {', '.join(repr(s) for s in small[:5])}"
        lines.append(text)
    return lines
