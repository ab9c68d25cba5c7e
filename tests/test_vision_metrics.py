"""Detection and segmentation metrics: hand-computed cases, and agreement with pycocotools'
own accumulate on a realistic set of detections."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from mlsmith.vision_metrics import Boxes, confusion, detection_metrics, segmentation_metrics

pytest.importorskip("pycocotools")


def _boxes(boxes: list[list[float]], labels: list[int], scores: list[float] | None = None) -> Boxes:
    return Boxes(
        np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64),
        None if scores is None else np.asarray(scores, dtype=np.float64),
    )


def test_one_box_found_at_iou_0_6() -> None:
    """Truth [0, 0, 10, 10]; found [0, 0, 10, 6]: IoU 60/100 = 0.6. Matched at the IoU
    thresholds 0.50, 0.55 and 0.60 (AP 1) and not at the 7 above (AP 0): AP@[.5:.95] = 0.3."""
    truth = [_boxes([[0, 0, 10, 10]], [1])]
    found = [_boxes([[0, 0, 10, 6]], [1], [0.9])]
    metrics = detection_metrics(truth, found, ["thing"], resamples=0)
    assert metrics["map_50"]["value"] == pytest.approx(1.0)
    assert metrics["map_50_95"]["value"] == pytest.approx(0.3)
    assert metrics["per_class"]["thing"] == pytest.approx({"ap_50": 1.0, "ap_50_95": 0.3})


def test_a_false_positive_ranked_first_halves_the_precision() -> None:
    """Two truths; detections by score: a miss (0.9), a hit (0.8), a hit (0.7). Recall 0.5 is
    reached at precision 1/2, recall 1 at 2/3; the envelope is 2/3 at every recall up to 1:
    AP@0.5 = 2/3 (101-point interpolation, every point at 2/3)."""
    truth = [_boxes([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1])]
    found = [
        _boxes([[50, 50, 60, 60], [0, 0, 10, 10], [20, 20, 30, 30]], [1, 1, 1], [0.9, 0.8, 0.7])
    ]
    metrics = detection_metrics(truth, found, ["thing"], resamples=0)
    assert metrics["map_50"]["value"] == pytest.approx(2 / 3)
    # Exact boxes: the same at every threshold.
    assert metrics["map_50_95"]["value"] == pytest.approx(2 / 3)


def test_the_wrong_class_is_a_miss_and_a_class_without_truth_is_left_out() -> None:
    truth = [_boxes([[0, 0, 10, 10]], [1])]
    found = [_boxes([[0, 0, 10, 10]], [2], [0.9])]
    metrics = detection_metrics(truth, found, ["a", "b", "c"], resamples=0)
    assert metrics["map_50"]["value"] == pytest.approx(0.0)  # class a: found nothing
    assert metrics["per_class"]["b"]["ap_50"] is None  # no truth of b: no AP
    assert metrics["per_class"]["c"]["ap_50"] is None


def test_no_detections_at_all_is_zero() -> None:
    truth = [_boxes([[0, 0, 10, 10]], [1]), _boxes([[5, 5, 9, 9]], [1])]
    found = [_boxes([], []), _boxes([], [])]
    metrics = detection_metrics(truth, found, ["thing"], resamples=20)
    assert metrics["map_50"]["value"] == 0.0 and metrics["map_50"]["ci95"] == [0.0, 0.0]


def test_agrees_with_pycocotools_on_noisy_detections() -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    truths, found, gt, dt = [], [], [], []
    for image in range(40):
        n = int(rng.integers(0, 5))
        xy = rng.uniform(0, 80, size=(n, 2))
        wh = rng.uniform(5, 30, size=(n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1)
        labels = rng.integers(1, 4, size=n)
        truths.append(_boxes(boxes.tolist(), labels.tolist()))
        noisy = boxes + rng.normal(0, 2.5, size=boxes.shape)
        keep = rng.random(n) > 0.2
        extra = int(rng.integers(0, 3))
        exy = rng.uniform(0, 80, size=(extra, 2))
        fake = np.concatenate([exy, exy + rng.uniform(5, 30, size=(extra, 2))], axis=1)
        pboxes = np.concatenate([noisy[keep], fake])
        plabels = np.concatenate([labels[keep], rng.integers(1, 4, size=extra)])
        scores = rng.uniform(0.05, 1.0, size=len(pboxes))
        found.append(_boxes(pboxes.tolist(), plabels.tolist(), scores.tolist()))
        for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):
            x0, y0, x1, y1 = box
            gt.append({"id": len(gt) + 1, "image_id": image + 1, "category_id": label,
                       "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                       "iscrowd": 0})  # fmt: skip
        for box, label, score in zip(
            pboxes.tolist(), plabels.tolist(), scores.tolist(), strict=True
        ):
            x0, y0, x1, y1 = box
            dt.append({"image_id": image + 1, "category_id": label, "score": score,
                       "bbox": [x0, y0, x1 - x0, y1 - y0]})  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        ground = COCO()
        ground.dataset = {
            "images": [{"id": i + 1} for i in range(40)],
            "annotations": gt,
            "categories": [{"id": k} for k in (1, 2, 3)],
        }
        ground.createIndex()
        reference = COCOeval(ground, ground.loadRes(dt), "bbox")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    # stats[0]: AP@[.5:.95], stats[1]: AP@.5 (all areas, 100 detections).
    metrics = detection_metrics(truths, found, ["a", "b", "c"], resamples=50)
    assert metrics["map_50_95"]["value"] == pytest.approx(reference.stats[0], abs=1e-9)
    assert metrics["map_50"]["value"] == pytest.approx(reference.stats[1], abs=1e-9)
    assert 0.2 < metrics["map_50"]["value"] < 0.95  # a realistic, imperfect case
    low, high = metrics["map_50"]["ci95"]
    assert low < metrics["map_50"]["value"] < high


def test_segmentation_by_hand() -> None:
    """Truth: left half class 1, right half 0; predicted: a 4x4 image with one column of the
    class-1 half called 0. Class 1: TP 4, FN 4, FP 0 -> IoU 0.5, Dice 2/3. Class 0: TP 8,
    FP 4 -> IoU 8/12."""
    truth = np.zeros((4, 4), np.uint8)
    truth[:, :2] = 1
    predicted = truth.copy()
    predicted[:, 1] = 0
    metrics = segmentation_metrics([truth], [predicted], ["background", "thing"], resamples=0)
    assert metrics["per_class"]["thing"] == pytest.approx({"iou": 0.5, "dice": 2 / 3})
    assert metrics["per_class"]["background"]["iou"] == pytest.approx(8 / 12)
    assert metrics["miou"]["value"] == pytest.approx((0.5 + 8 / 12) / 2)
    assert metrics["dice"]["value"] == pytest.approx(2 / 3)  # foreground classes only
    assert metrics["pixel_accuracy"]["value"] == pytest.approx(12 / 16)


def test_ignored_pixels_count_for_nothing_and_absent_classes_are_left_out() -> None:
    truth = np.array([[1, 255], [0, 0]], np.uint8)
    predicted = np.array([[1, 2], [0, 0]], np.uint8)
    assert confusion(truth, predicted, 3).sum() == 3
    metrics = segmentation_metrics([truth], [predicted], ["bg", "a", "b"], resamples=0)
    assert metrics["miou"]["value"] == pytest.approx(1.0)  # class b: nowhere once 255 is out
    assert metrics["per_class"]["b"]["iou"] is None


def test_segmentation_intervals_cover_the_value() -> None:
    rng = np.random.default_rng(1)
    truths = [rng.integers(0, 3, size=(8, 8)).astype(np.uint8) for _ in range(30)]
    predicted = [
        np.where(rng.random((8, 8)) < 0.8, t, (t + 1) % 3).astype(np.uint8) for t in truths
    ]
    metrics = segmentation_metrics(truths, predicted, ["bg", "a", "b"], resamples=100)
    low, high = metrics["miou"]["ci95"]
    assert low < metrics["miou"]["value"] < high and high - low < 0.2
