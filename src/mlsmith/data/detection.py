"""Object detection data (``data.type: detection``): a folder of images and their boxes in a COCO
JSON file or a CSV (``image, x_min, y_min, x_max, y_max, label``; see
:mod:`mlsmith.data.annotations`).

Each image's boxes are placed on the canvas with it (multiplied by its scale) and stored as a
(M, 5) block: x_min, y_min, x_max, y_max, label (1..C), padded with label-0 rows to the split's
most boxes, so a split's targets are one array and images without objects are rows of padding.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.config import Config, DetectionDataConfig
from mlsmith.data.annotations import read_annotations
from mlsmith.data.base import PreparedData, Split
from mlsmith.data.images.decode import require_vision
from mlsmith.data.scenes import (
    GEOMETRY,
    PATH,
    ScenePreprocessor,
    decode_images,
    file_digest,
    fingerprint,
    fit_preprocessor,
    held_out_frames,
    log_prepared,
    scene_config,
)
from mlsmith.data.splits import split_frames
from mlsmith.errors import DataError
from mlsmith.runtime.images import parallel_map
from mlsmith.vision_tasks import DetectionTask

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

BOXES = "boxes"  # the frame column holding each image's (n, 5) boxes and labels


class DetectionPreprocessor(ScenePreprocessor):
    """The canvas, channels and normalisation; the classes are the task's."""

    kind = "detection"

    def encode_targets(self, frame: pd.DataFrame, geometry: np.ndarray, source: str) -> np.ndarray:
        """Each row's boxes (the ``boxes`` column) on the canvas: float32 (N, M, 5), padded."""
        if BOXES not in frame.columns:
            raise DataError(f"{source}: no '{BOXES}' column of boxes")
        return pad_boxes(frame[BOXES].tolist(), geometry[:, 2])


def pad_boxes(per_image: list[np.ndarray], scales: np.ndarray) -> np.ndarray:
    """(n_i, 5) boxes and labels per image, scaled onto the canvas, as one (N, M, 5) array."""
    most = max([len(b) for b in per_image] + [1])
    out = np.zeros((len(per_image), most, 5), dtype=np.float32)
    for i, (rows, scale) in enumerate(zip(per_image, scales, strict=True)):
        rows = np.asarray(rows, dtype=np.float32).reshape(-1, 5)
        out[i, : len(rows), :4] = rows[:, :4] * scale
        out[i, : len(rows), 4] = rows[:, 4]
    return out


def load_preprocessor(directory: Path) -> DetectionPreprocessor:
    """The preprocessor saved in a run directory."""
    require_vision()
    return DetectionPreprocessor.load(directory)


def prepare(config: Config, *, preprocessor: DetectionPreprocessor | None = None) -> PreparedData:
    """Read the images and boxes, split them, fit the canvas, channels and normalisation on the
    training split, and place every image and its boxes on the canvas.

    A given ``preprocessor`` (a run being resumed or evaluated) is used instead of fitting one.
    """
    import pandas as pd

    require_vision()
    data: DetectionDataConfig = scene_config(config, DetectionDataConfig)
    started = time.perf_counter()
    annotations = read_annotations(data.annotations, data.path)
    if not annotations.images:
        raise DataError(f"{data.annotations}: no images")
    folder = Path(data.path)
    frame = pd.DataFrame(
        {
            PATH: [str(folder / image.file) for image in annotations.images],
            BOXES: [
                np.concatenate([image.boxes, image.labels[:, None]], axis=1).astype(np.float32)
                for image in annotations.images
            ],
        }
    )
    parts = split_frames(
        frame, None, None, data, classification=False, seed=config.seed, unit="images"
    )
    paths = frame[PATH].tolist()
    images = decode_images(paths, preprocessor.channels if preprocessor else data.channels)
    if preprocessor is None:
        task = DetectionTask(annotations.classes)
        preprocessor, placed = fit_preprocessor(
            DetectionPreprocessor, data, task, images, parts.indices.train
        )
    else:
        if preprocessor.task.classes != annotations.classes:
            raise DataError(
                f"{data.annotations}: classes {annotations.classes}, the run was trained on "
                f"{preprocessor.task.classes}"
            )
        placed = preprocessor.place(images)
    boxes = preprocessor.encode_targets(frame, placed[GEOMETRY], data.annotations)

    def split(rows: np.ndarray) -> Split:
        return Split({k: v[rows] for k, v in placed.items()}, boxes[rows])

    counts = {"train": len(parts.train), "val": len(parts.val), "test": len(parts.test)}
    log_prepared("detection", data.path, counts, preprocessor.canvas, preprocessor.channels)
    digests = parallel_map(file_digest, paths)
    prints = [
        f"{image.file}\0{digest}\0{np.round(boxes_, 3).tobytes().hex()}"
        for image, digest, boxes_ in zip(annotations.images, digests, frame[BOXES], strict=True)
    ]
    n_boxes = sum(len(image.boxes) for image in annotations.images)
    log.info(
        "%d images, %d boxes read in %.1f s", len(frame), n_boxes, time.perf_counter() - started
    )
    summary: dict[str, Any] = {
        "source": data.path,
        "annotations": data.annotations,
        "rows": counts,
        "task": "detection",
        "classes": len(preprocessor.task.classes),
        "boxes": n_boxes,
        "image_size": list(preprocessor.canvas),
        "channels": preprocessor.channels,
        "cache": "memory",
    }
    return PreparedData(
        task=preprocessor.task,
        preprocessor=preprocessor,
        train=split(parts.indices.train),
        val=split(parts.indices.val),
        test=split(parts.indices.test) if len(parts.indices.test) else None,
        frames=held_out_frames(frame, parts.indices.val, parts.indices.test),
        fingerprint=fingerprint(prints),
        summary=summary,
    )
