"""Detection and segmentation metrics, with bootstrap confidence intervals over images.

Detection: COCO's average precision, computed by ``pycocotools`` (the reference
implementation): ``map_50`` (AP at IoU 0.5), ``map_50_95`` (AP averaged over IoU 0.50:0.05:0.95)
and the per-class AP at both, with up to 100 detections an image. For the intervals the images
are resampled with replacement and AP recomputed from COCOeval's per-image matches
(:func:`_accumulate` does what ``COCOeval.accumulate`` does, on any multiset of images; on the
images as they are it gives COCOeval's own figures, which a test checks).

Segmentation: a confusion matrix per image (pixels labelled 255 ignored); ``miou`` is the mean
over classes of intersection over union (the background included, as VOC and Cityscapes
report it), ``dice`` the mean Dice coefficient over the foreground classes, and per-class IoU
and Dice. A class absent from both truth and prediction is left out of the means. Intervals
resample images and sum their confusion matrices.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlsmith.errors import MissingExtraError

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = 100
IGNORE_INDEX = 255


@dataclass(frozen=True)
class Boxes:
    """One image's boxes (x_min, y_min, x_max, y_max), labels 1..C and, for predictions, scores."""

    boxes: np.ndarray  # (N, 4) float
    labels: np.ndarray  # (N,) int
    scores: np.ndarray | None = None  # (N,) float, predictions only


def _coco_eval(truths: Sequence[Boxes], predictions: Sequence[Boxes], n_classes: int) -> Any:
    """COCOeval run over every image (evaluate only: the per-image matches)."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise MissingExtraError("pycocotools", "vision", "Detection metrics") from None

    images = [{"id": i + 1} for i in range(len(truths))]
    annotations: list[dict[str, Any]] = []
    for i, truth in enumerate(truths):
        for box, label in zip(truth.boxes.tolist(), truth.labels.tolist(), strict=True):
            x0, y0, x1, y1 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    results = []
    for i, predicted in enumerate(predictions):
        scores = (
            predicted.scores if predicted.scores is not None else np.ones(len(predicted.labels))
        )
        for box, label, score in zip(
            predicted.boxes.tolist(), predicted.labels.tolist(), scores.tolist(), strict=True
        ):
            x0, y0, x1, y1 = box
            results.append(
                {
                    "image_id": i + 1,
                    "category_id": int(label),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(score),
                }
            )
    ground = COCO()
    ground.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k} for k in range(1, n_classes + 1)],
    }
    # pycocotools prints its progress; the figures are returned, not printed.
    with contextlib.redirect_stdout(io.StringIO()):
        ground.createIndex()
        found = ground.loadRes(results) if results else COCO()
        if not results:
            found.dataset = {"images": images, "annotations": [], "categories": []}
            found.createIndex()
        evaluation = COCOeval(ground, found, "bbox")
        evaluation.params.imgIds = [image["id"] for image in images]
        evaluation.params.catIds = list(range(1, n_classes + 1))
        evaluation.params.areaRng = [evaluation.params.areaRng[0]]  # all sizes
        evaluation.params.areaRngLbl = ["all"]
        evaluation.params.maxDets = [MAX_DETECTIONS]
        evaluation.evaluate()
    return evaluation


def _accumulate(evaluation: Any, images: np.ndarray, n_classes: int) -> np.ndarray:
    """AP per (IoU threshold, class) over ``images`` (indices, repeats allowed), as
    ``COCOeval.accumulate`` computes it: NaN for a class without ground truth there."""
    # A row is all NaN (a class without truth) or all numbers: a plain mean keeps the NaN.
    return _precision_curves(evaluation, images, n_classes).mean(axis=-1)


def precision_recall(
    truths: Sequence[Boxes], predictions: Sequence[Boxes], n_classes: int
) -> np.ndarray:
    """Each class's precision-recall curve at IoU 0.5, as COCO samples it: (C, 101) precision
    at recall ``RECALL_POINTS`` (the precision envelope), NaN rows for classes without truth."""
    evaluation = _coco_eval(truths, predictions, n_classes)
    return _precision_curves(evaluation, np.arange(len(truths)), n_classes)[0]


def _precision_curves(evaluation: Any, images: np.ndarray, n_classes: int) -> np.ndarray:
    """(IoU thresholds, classes, recall points) of sampled precision over ``images``."""
    n_images = len(evaluation.params.imgIds)
    curves = np.full((len(IOU_THRESHOLDS), n_classes, len(RECALL_POINTS)), np.nan)
    for k in range(n_classes):
        # evalImgs is ordered class-major, then area range (one), then image.
        per_image = [evaluation.evalImgs[k * n_images + int(i)] for i in images]
        per_image = [e for e in per_image if e is not None]
        if not per_image:
            continue
        scores = np.concatenate([e["dtScores"][:MAX_DETECTIONS] for e in per_image])
        order = np.argsort(-scores, kind="mergesort")
        matched = np.concatenate([e["dtMatches"][:, :MAX_DETECTIONS] for e in per_image], axis=1)
        ignored = np.concatenate([e["dtIgnore"][:, :MAX_DETECTIONS] for e in per_image], axis=1)
        positives = sum(int(np.count_nonzero(e["gtIgnore"] == 0)) for e in per_image)
        if positives == 0:
            continue
        matched, ignored = matched[:, order], ignored[:, order]
        tp = np.cumsum(np.logical_and(matched, ~ignored), axis=1, dtype=np.float64)
        fp = np.cumsum(np.logical_and(~matched.astype(bool), ~ignored), axis=1, dtype=np.float64)
        for t in range(len(IOU_THRESHOLDS)):
            recall = tp[t] / positives
            precision = tp[t] / (tp[t] + fp[t] + np.spacing(1))
            if not len(precision):  # nothing detected: precision 0 at every recall
                curves[t, k] = 0.0
                continue
            # The precision envelope: the best precision at this recall or beyond.
            envelope = np.maximum.accumulate(precision[::-1])[::-1]
            at = np.searchsorted(recall, RECALL_POINTS, side="left")
            # Recall never reached: precision 0 there (COCO's loop stops at the first).
            curves[t, k] = np.where(
                at < len(envelope), envelope[np.minimum(at, len(envelope) - 1)], 0.0
            )
    return curves


def detection_metrics(
    truths: Sequence[Boxes],
    predictions: Sequence[Boxes],
    classes: Sequence[str],
    *,
    resamples: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """``{"map_50": {"value", "ci95"}, "map_50_95": ..., "per_class": {name: {"ap_50",
    "ap_50_95"}}}`` for one prediction per truth image (same order)."""
    if len(truths) != len(predictions):
        raise ValueError(f"{len(truths)} images of truth, {len(predictions)} of predictions")
    n_classes = len(classes)
    evaluation = _coco_eval(truths, predictions, n_classes)
    every = np.arange(len(truths))
    ap = _accumulate(evaluation, every, n_classes)
    rng = np.random.default_rng(seed)
    draws = [
        _accumulate(evaluation, rng.integers(0, len(truths), len(truths)), n_classes)
        for _ in range(resamples if len(truths) > 1 else 0)
    ]
    tail = (1.0 - confidence) / 2 * 100

    def summary(value: float, draw_values: list[float]) -> dict[str, Any]:
        finite = [v for v in draw_values if np.isfinite(v)]
        ci = (
            [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]
            if len(finite) >= 2
            else None
        )
        return {"value": _finite_or_none(value), "ci95": ci}

    return {
        "map_50": summary(_nanmean(ap[0]), [_nanmean(d[0]) for d in draws]),
        "map_50_95": summary(_nanmean(ap), [_nanmean(d) for d in draws]),
        "per_class": {
            name: {
                "ap_50": _finite_or_none(ap[0, k]),
                "ap_50_95": _finite_or_none(_nanmean(ap[:, k])),
            }
            for k, name in enumerate(classes)
        },
    }


def confusion(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """The (C, C) pixel confusion matrix of one image (rows: truth), 255 in truth ignored."""
    keep = truth != IGNORE_INDEX
    index = truth[keep].astype(np.int64) * n_classes + predicted[keep].astype(np.int64)
    return np.bincount(index, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def segmentation_metrics(
    truths: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    classes: Sequence[str],
    *,
    resamples: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """``{"miou", "dice", "pixel_accuracy": {"value", "ci95"}, "per_class": {name: {"iou",
    "dice"}}}`` from class-id masks, ``classes[0]`` the background."""
    n = len(classes)
    matrices = np.stack([confusion(t, p, n) for t, p in zip(truths, predictions, strict=True)])
    rng = np.random.default_rng(seed)
    draws = [
        _segmentation_scores(matrices[rng.integers(0, len(matrices), len(matrices))].sum(0))
        for _ in range(resamples if len(matrices) > 1 else 0)
    ]
    scores = _segmentation_scores(matrices.sum(0))
    tail = (1.0 - confidence) / 2 * 100
    out: dict[str, Any] = {}
    for key in ("miou", "dice", "pixel_accuracy"):
        values = [d[key] for d in draws if np.isfinite(d[key])]
        ci = (
            [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]
            if len(values) >= 2
            else None
        )
        out[key] = {"value": _finite_or_none(scores[key]), "ci95": ci}
    out["per_class"] = {
        name: {
            "iou": _finite_or_none(scores["iou"][k]),
            "dice": _finite_or_none(scores["dices"][k]),
        }
        for k, name in enumerate(classes)
    }
    return out


def _segmentation_scores(matrix: np.ndarray) -> dict[str, Any]:
    tp = np.diag(matrix).astype(np.float64)
    truth, predicted = matrix.sum(1), matrix.sum(0)
    union = truth + predicted - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    dice = np.where(present, 2 * tp / np.maximum(truth + predicted, 1), np.nan)
    total = matrix.sum()
    return {
        "iou": iou,
        "dices": dice,
        "miou": _nanmean(iou),
        "dice": _nanmean(dice[1:]),
        "pixel_accuracy": float(tp.sum() / total) if total else np.nan,
    }


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
