"""How a detection package's boxes are compared with ``mlsmith predict``'s (packaging.scenes)."""

from __future__ import annotations

import pandas as pd
import pytest

from mlsmith.packaging.scenes import compare_boxes

FRAME = pd.DataFrame({"path": ["a.png", "b.png"]})


def _boxes(rows: list[tuple[object, float, str, float]], key: str) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {key: where, "x_min": x, "y_min": 1.0, "x_max": x + 5, "y_max": 6.0}
            | {"label": label, "score": score}
            for where, x, label, score in rows
        ]
    )


def test_the_same_boxes_agree_fully_and_report_the_largest_difference() -> None:
    expected = _boxes([("a.png", 1.0, "circle", 0.9), ("b.png", 3.0, "square", 0.8)], "image")
    got = _boxes([(0, 1.0004, "circle", 0.9001), (1, 3.0, "square", 0.8)], "row")
    record = compare_boxes(got, expected, FRAME, tolerance=1e-3)
    assert record["box_agreement"] == 1.0 and record["matched"] == 2
    assert record["max_abs_diff"] == pytest.approx(4e-4)
    assert record["max_score_diff"] == pytest.approx(1e-4)


def test_a_box_kept_by_one_runtime_only_lowers_the_agreement() -> None:
    # Near-equal scores, or an overlap at the NMS threshold: the package kept another box.
    expected = _boxes([("a.png", 1.0, "circle", 0.5), ("a.png", 9.0, "circle", 0.3)], "image")
    got = _boxes([(0, 1.0, "circle", 0.5), (0, 20.0, "circle", 0.3)], "row")
    record = compare_boxes(got, expected, FRAME, tolerance=1e-3)
    assert record["box_agreement"] == 0.5
    # Another label, or another image, is never a match.
    got = _boxes([(0, 1.0, "square", 0.5), (1, 9.0, "circle", 0.3)], "row")
    assert compare_boxes(got, expected, FRAME, tolerance=1e-3)["matched"] == 0
    # Nothing found by either: nothing to disagree on.
    empty = pd.DataFrame(columns=["row", "x_min", "y_min", "x_max", "y_max", "label", "score"])
    none = compare_boxes(empty, expected.iloc[:0], FRAME, tolerance=1e-3)
    assert none["box_agreement"] == 1.0
