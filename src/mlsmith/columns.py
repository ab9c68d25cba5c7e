"""What a table column's values really are, when pandas' reading of them misleads.

A few stray strings such as '?' or 'unknown' among numbers make pandas read a whole numeric
column as text; the data kinds warn about it for features and :mod:`mlsmith.tasks` refuses it
for a target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# A text column is numbers stored as text when at least this share of its values, and at least
# MIN_NUMBERS of them, parse as numbers: the rest are usually markers such as '?' or 'unknown'.
NUMBER_SHARE = 0.9
MIN_NUMBERS = 5


@dataclass(frozen=True)
class NumbersAsText:
    """A text column whose values are mostly numbers: how many, and a few that are not."""

    numbers: int
    values: int
    # (row, text) of up to 3 distinct values that are not numbers, in the order they first appear.
    examples: list[tuple[Any, str]]

    def describe(self, rows: bool = True) -> str:
        """E.g. ``197 of 200 values are numbers; not numbers: '?' (row 7), 'unknown' (row 90)``."""
        shown = ", ".join(
            f"{text!r} (row {row})" if rows else repr(text) for row, text in self.examples
        )
        return f"{self.numbers} of {self.values} values are numbers; not numbers: {shown}"


def numbers_as_text(column: pd.Series) -> NumbersAsText | None:
    """How ``column`` holds numbers as text, when it does: a few stray strings such as '?' or
    'unknown' among numbers make pandas read a whole numeric column as text.

    Rows are ``column``'s index labels. None for numeric columns and for text that is mostly not
    numbers.
    """
    import pandas as pd

    if not (pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)):
        return None
    present = column.dropna()
    if len(present) < MIN_NUMBERS:
        return None
    try:
        # Parsing is slow for words (an exception each), so parse each distinct value once, and
        # give up early on a column whose first distinct values are mostly words.
        counts = present.value_counts(sort=False)
        distinct = pd.Series(counts.index, dtype=object)
        if pd.to_numeric(distinct[:1000], errors="coerce").notna().mean() < 0.5:
            return None
        is_number = pd.to_numeric(distinct, errors="coerce").notna().to_numpy()
    except (TypeError, ValueError):  # nested values: not this problem
        return None
    numbers = int(counts.to_numpy()[is_number].sum())
    if numbers == len(present) or numbers < max(MIN_NUMBERS, NUMBER_SHARE * len(present)):
        return None
    strays = present[present.isin(distinct[~is_number].tolist())].drop_duplicates()[:3]
    examples = [(row, str(value)) for row, value in strays.items()]
    return NumbersAsText(numbers, len(present), examples)
