"""Semantic segmentation data (``data.type: segmentation``): a folder of images and a folder of
PNG masks with the same file stems.

A mask holds a class id per pixel (grayscale or palette PNG; 255 marks pixels to ignore), or,
with ``data.classes`` given as name -> [r, g, b], colours. Without ``data.classes`` the classes
are the ids found in the masks, 0 named ``background``. Images and masks are placed on the
canvas together (:mod:`mlsmith.runtime.scenes`), the padding ignored.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.config import Config, SegmentationDataConfig
from mlsmith.data.annotations import read_mask
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
    image_frame,
    log_prepared,
    scene_config,
)
from mlsmith.data.splits import split_frames
from mlsmith.errors import DataError
from mlsmith.runtime.images import parallel_map
from mlsmith.runtime.scenes import IGNORE_INDEX, place_mask
from mlsmith.vision_tasks import SegmentationTask

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

MASK = "mask"  # the frame column holding each image's mask file
# Class ids a mask may hold when data.classes does not list them (255 is "ignore").
MAX_CLASS_ID = 254


class SegmentationPreprocessor(ScenePreprocessor):
    """The canvas, channels, normalisation and the class colours, if masks are in colour."""

    kind = "segmentation"

    def __init__(
        self,
        *,
        colours: list[list[int]] | None = None,
        class_frequencies: list[float] | None = None,
        **fitted: Any,
    ) -> None:
        super().__init__(**fitted)
        self.colours = [list(c) for c in colours] if colours is not None else None
        # Each class's share of the labelled training pixels (the UNet's head starts there).
        self.class_frequencies = class_frequencies

    def encode_targets(self, frame: pd.DataFrame, geometry: np.ndarray, source: str) -> np.ndarray:
        """Each row's mask (the ``mask`` column's file) on the canvas: uint8 (N, H, W)."""
        if MASK not in frame.columns:
            raise DataError(f"{source}: no '{MASK}' column of mask files")
        colours = (
            {tuple(c): i for i, c in enumerate(self.colours)} if self.colours is not None else None
        )
        n_classes = len(self.task.classes)

        def one(i: int) -> np.ndarray:
            height, width, scale = geometry[i]
            mask = read_mask(
                Path(frame[MASK].iloc[i]),
                (int(width), int(height)),
                n_classes,
                colours,  # type: ignore[arg-type]
            )
            return place_mask(mask, self.canvas, float(scale))

        masks = parallel_map(one, list(range(len(frame))))
        if not masks:
            return np.zeros((0, *self.canvas), dtype=np.uint8)
        return np.stack(masks)

    def fitted_state(self) -> dict[str, Any]:
        return {
            **super().fitted_state(),
            "colours": self.colours,
            "class_frequencies": self.class_frequencies,
        }

    def model_inputs(self) -> dict[str, Any]:
        return {**super().model_inputs(), "class_frequencies": self.class_frequencies}


def load_preprocessor(directory: Path) -> SegmentationPreprocessor:
    """The preprocessor saved in a run directory."""
    require_vision()
    return SegmentationPreprocessor.load(directory)


def prepare(
    config: Config, *, preprocessor: SegmentationPreprocessor | None = None
) -> PreparedData:
    """Read the images and masks, split them, fit the canvas, channels and normalisation on
    the training split, and place every image and mask on the canvas.

    A given ``preprocessor`` (a run being resumed or evaluated) is used instead of fitting one.
    """
    require_vision()
    data: SegmentationDataConfig = scene_config(config, SegmentationDataConfig)
    started = time.perf_counter()
    frame = _paired(data)
    parts = split_frames(
        frame, None, None, data, classification=False, seed=config.seed, unit="images"
    )
    paths = frame[PATH].tolist()
    images = decode_images(paths, preprocessor.channels if preprocessor else data.channels)
    if preprocessor is None:
        names, colours = _classes(data, frame.iloc[parts.indices.train])
        task = SegmentationTask(names, getattr(config.model, "dice_weight", 1.0))
        preprocessor, placed = fit_preprocessor(
            SegmentationPreprocessor, data, task, images, parts.indices.train, colours=colours
        )
    else:
        preprocessor.task = SegmentationTask(
            preprocessor.task.classes, getattr(config.model, "dice_weight", 1.0)
        )
        placed = preprocessor.place(images)
    masks = preprocessor.encode_targets(frame, placed[GEOMETRY], data.masks)
    if preprocessor.class_frequencies is None:
        train_masks = masks[parts.indices.train]
        pixels = np.bincount(
            train_masks[train_masks != IGNORE_INDEX].ravel(),
            minlength=len(preprocessor.task.classes),
        )
        preprocessor.class_frequencies = (pixels / max(int(pixels.sum()), 1)).tolist()

    def split(rows: np.ndarray) -> Split:
        return Split({k: v[rows] for k, v in placed.items()}, masks[rows])

    counts = {"train": len(parts.train), "val": len(parts.val), "test": len(parts.test)}
    log_prepared("segmentation", data.path, counts, preprocessor.canvas, preprocessor.channels)
    digests = parallel_map(file_digest, [*paths, *frame[MASK].tolist()])
    prints = [
        f"{Path(p).name}\0{a}\0{b}"
        for p, a, b in zip(paths, digests[: len(paths)], digests[len(paths) :], strict=True)
    ]
    log.info("images and masks read in %.1f s", time.perf_counter() - started)
    return PreparedData(
        task=preprocessor.task,
        preprocessor=preprocessor,
        train=split(parts.indices.train),
        val=split(parts.indices.val),
        test=split(parts.indices.test) if len(parts.indices.test) else None,
        frames=held_out_frames(frame, parts.indices.val, parts.indices.test),
        fingerprint=fingerprint(prints),
        summary={
            "source": data.path,
            "rows": counts,
            "task": "segmentation",
            "classes": len(preprocessor.task.classes),
            "image_size": list(preprocessor.canvas),
            "channels": preprocessor.channels,
            "cache": "memory",
        },
    )


def _paired(data: SegmentationDataConfig) -> pd.DataFrame:
    """Every image in ``data.path`` with its mask in ``data.masks`` (the same stem, .png)."""
    frame = image_frame(data.path)
    folder = Path(data.masks)
    if not folder.is_dir():
        raise DataError(f"data.masks: no such folder of masks: {data.masks}")
    masks = [folder / (Path(p).stem + ".png") for p in frame[PATH]]
    missing = [str(m) for m in masks if not m.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(frame)} images have no mask in {data.masks}, e.g. "
            f"{Path(frame[PATH].iloc[[str(m) for m in masks].index(missing[0])]).name} has no "
            f"{missing[0]}; a mask is a PNG with its image's file stem"
        )
    return frame.assign(**{MASK: [str(m) for m in masks]})


def _classes(
    data: SegmentationDataConfig, train: pd.DataFrame
) -> tuple[list[str], list[list[int]] | None]:
    """Class names in id order, and their colours for colour masks."""
    if isinstance(data.classes, dict):
        return list(data.classes), [list(c) for c in data.classes.values()]
    if isinstance(data.classes, list):
        if len(data.classes) < 2:
            raise DataError("data.classes: a segmentation needs at least two classes")
        return list(data.classes), None
    from PIL import Image

    highest = 0
    for path in train[MASK]:
        with Image.open(path) as opened:
            if opened.mode not in ("L", "P", "I", "I;16"):
                raise DataError(
                    f"{path}: a mask in colour (mode '{opened.mode}'); give data.classes as "
                    "name -> [r, g, b] for colour masks"
                )
            ids = np.unique(np.asarray(opened))
        ids = ids[ids != 255]
        highest = max(highest, int(ids.max()) if ids.size else 0)
    if highest > MAX_CLASS_ID or highest < 1:
        raise DataError(
            f"{data.masks}: the training masks hold class ids up to {highest}; a segmentation "
            "needs ids 0 (background) .. C-1 with C >= 2; list data.classes to name them"
        )
    return ["background", *(str(i) for i in range(1, highest + 1))], None
