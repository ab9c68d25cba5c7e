"""Checks and clean-ups on raw rows that training, prediction and every package share.

Raw rows arrive as a pandas DataFrame from a file, a notebook or a request; these functions say
what is wrong with them in the user's terms (the column, what was expected, what was found).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DataError, did_you_mean

if TYPE_CHECKING:
    import pandas as pd

# Tried, most frequent first, when a CSV header holds no comma (European exports use ';').
SNIFFED_SEPARATORS = (";", "\t", "|")
# What a one-column header can reveal about the separator it should have been split on.
LIKELY_SEPARATORS = (",", *SNIFFED_SEPARATORS)


def require_columns(frame: pd.DataFrame, columns: list[str], source: str, role: str) -> None:
    """Raise a DataError naming the first column of ``columns`` that ``frame`` lacks."""
    present = [str(c) for c in frame.columns]
    # One column whose name holds separators: the file was split on the wrong character.
    guess = likely_separator(present[0]) if len(present) == 1 else None
    hint = f"; the file looks {guess!r}-separated; set data.sep={guess!r}" if guess else ""
    for column in columns:
        if column not in frame.columns:
            raise DataError(
                f"{source}: {role} column '{column}' not found{did_you_mean(column, present)}; "
                f"columns are: {', '.join(present[:30])}{' ...' if len(present) > 30 else ''}"
                f"{hint}"
            )


def likely_separator(text: str, candidates: Sequence[str] = LIKELY_SEPARATORS) -> str | None:
    """The candidate separator occurring most often in ``text`` (the earliest on a tie)."""
    counts = {sep: text.count(sep) for sep in candidates}
    best = max(candidates, key=lambda sep: counts[sep])
    return best if counts[best] else None


def mark_missing(frame: pd.DataFrame, na_values: Sequence[str]) -> pd.DataFrame:
    """Cells equal to one of ``na_values`` become missing, as pandas' CSV reader makes them.

    For Parquet files and frames already in memory. As in a CSV, a text column left holding only
    numbers becomes numeric, and a number among ``na_values`` (say '-999') marks numeric cells.
    """
    import pandas as pd

    if not na_values:
        return frame
    texts = set(na_values)
    numbers = {n for n in (_as_number(v) for v in na_values) if n is not None}
    changed: dict[Any, pd.Series] = {}
    for column in frame.columns:
        series = frame[column]
        if pd.api.types.is_bool_dtype(series):
            continue
        if pd.api.types.is_numeric_dtype(series):
            hit = series.isin(numbers) if numbers else None
        elif pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series):
            try:
                hit = series.isin(texts)
            except TypeError:  # lists or dicts in the column: nothing to mark
                continue
        else:
            continue
        if hit is None or not hit.any():
            continue
        cleaned = series.mask(hit)
        if not pd.api.types.is_numeric_dtype(series):
            parsed = pd.to_numeric(cleaned, errors="coerce")
            if bool((parsed.notna() == cleaned.notna()).all()):
                cleaned = parsed
        changed[column] = cleaned
    if not changed:
        return frame
    frame = frame.copy()
    for column, values in changed.items():
        frame[column] = values
    return frame


def nested_columns(frame: pd.DataFrame, columns: Iterable[Any] | None = None) -> dict[str, str]:
    """Columns holding Parquet's nested values, each with its kind: list, struct or map.

    Parquet columns hold one type, so the first value that is present tells.
    """
    found: dict[str, str] = {}
    # The dtypes in one pass: frame[column] costs tens of microseconds per column.
    dtypes = dict(zip(frame.columns, frame.dtypes, strict=True))
    for column in frame.columns if columns is None else columns:
        if getattr(dtypes.get(column), "kind", "O") != "O":
            continue
        series = frame[column]
        for value in series.to_numpy():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            kind = _nested_kind(value)
            if kind:
                found[str(column)] = kind
            break
    return found


def _nested_kind(value: object) -> str | None:
    if isinstance(value, dict):
        return "struct"
    if isinstance(value, (list, tuple, set, np.ndarray)):
        # pyarrow gives a map as a list of (key, value) pairs.
        if len(value) and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            return "map"
        return "list"
    return None


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
