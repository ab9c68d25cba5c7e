"""A detection or segmentation package: images in, boxes or masks out, with NumPy, Pillow and
ONNX Runtime only.

The payload holds ``model.onnx`` (uint8 canvas images in; a segmentation network's logits or a
detector's detections out, see :mod:`mlsmith.packaging.scenes`), ``preprocessing.json`` (the
canvas, channels and classes) and ``package.json``. Images are decoded and placed on the canvas
by :mod:`.scenes` and :mod:`.images`, the code training used, so the package sees the training
pixels; predictions map back to each image's own pixels.

:meth:`ScenePackage.predict` answers a table, as MLflow's pyfunc wants: for segmentation one row
per image (``mask``: a PNG of class ids, ``height``, ``width``), for detection one row per box
(``row``: the input row it was found in, ``x_min, y_min, x_max, y_max, label, score``).
:meth:`ScenePackage.masks` and :meth:`ScenePackage.detections` give the same as arrays.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .engines import OnnxEngine
from .errors import DataError
from .images import pillow, read_images
from .package import (
    DATA_DIR,
    EXPORT_FILE,
    PACKAGE_FILE,
    PAYLOAD_DIR,
    PREPROCESSING_FILE,
    _read_json,
)
from .scenes import place_images, unplace_boxes, unplace_mask

if TYPE_CHECKING:
    import pandas as pd

SCENE_KINDS = ("segmentation", "detection")
DETECTION_COLUMNS = ("row", "x_min", "y_min", "x_max", "y_max", "label", "score")
MASK_COLUMNS = ("mask", "height", "width")
# Images a segmentation graph runs at once (a detector's graph takes one; see packaging.scenes).
BATCH = 8


@dataclass(frozen=True)
class Detections:
    """One image's detections in its own pixels, most confident first."""

    boxes: np.ndarray  # (K, 4) float64 x_min, y_min, x_max, y_max
    scores: np.ndarray  # (K,) float64
    labels: list[str]


class ScenePackage:
    """A segmentation or detection package loaded for prediction."""

    def __init__(self, directory: str | Path, *, providers: list[str] | None = None) -> None:
        root = Path(directory)
        data = root / DATA_DIR / PAYLOAD_DIR if (root / "MLmodel").is_file() else root
        self.directory = data
        self.info: dict[str, Any] = _read_json(data / PACKAGE_FILE)
        state = _read_json(data / PREPROCESSING_FILE)
        self.kind: str = state["kind"]
        if self.kind not in SCENE_KINDS:
            raise DataError(f"{data}: a {self.kind} package, not a segmentation or detection one")
        self.classes: list[str] = [str(c) for c in state["task"]["classes"]]
        self.canvas = (int(state["height"]), int(state["width"]))
        self.channels = int(state["channels"])
        self.fixed = bool(state["fixed"])
        self.batch = 1 if self.kind == "detection" else BATCH
        export = data / EXPORT_FILE
        self.export: dict[str, Any] = _read_json(export) if export.is_file() else {}
        self.engine = OnnxEngine(data / self.info["model_file"], providers=providers)

    @property
    def family(self) -> str:
        return str(self.info["family"])

    @property
    def columns(self) -> list[str]:
        """The raw input column: ``path`` (file paths or the files' bytes)."""
        return ["path"]

    def placed(self, frame: pd.DataFrame, source: str) -> tuple[np.ndarray, np.ndarray]:
        """``frame``'s images on the canvas, and each one's geometry."""
        images = read_images(frame, source, self.channels)
        return place_images(images, self.canvas, self.channels, self.fixed)

    def raw(self, images: np.ndarray) -> np.ndarray:
        """The graph's outputs for canvas images (N, C, H, W), :attr:`batch` at a time."""
        chunks = [
            self.engine.raw({"image": images[i : i + self.batch]})
            for i in range(0, len(images), self.batch)
        ]
        if chunks:
            return np.concatenate(chunks)
        return np.zeros((0, len(self.classes), *self.canvas), dtype=np.float32)

    def masks(self, frame: pd.DataFrame, source: str = "input") -> list[np.ndarray]:
        """Each image's predicted class ids, uint8 (height, width) in its own pixels."""
        self._require("segmentation")
        images, geometry = self.placed(frame, source)
        out = []
        for i in range(0, len(images), self.batch):
            logits = self.engine.raw({"image": images[i : i + self.batch]})
            for classes, where in zip(
                logits.argmax(axis=1), geometry[i : i + self.batch], strict=True
            ):
                out.append(unplace_mask(classes.astype(np.uint8), where))
        return out

    def detections(self, frame: pd.DataFrame, source: str = "input") -> list[Detections]:
        """Each image's detections in its own pixels."""
        self._require("detection")
        images, geometry = self.placed(frame, source)
        out = []
        for image, where in zip(images, geometry, strict=True):
            found = self.engine.raw({"image": image[None]})[0]
            kept = found[found[:, 5] > 0]
            out.append(
                Detections(
                    boxes=unplace_boxes(kept[:, :4], where),
                    scores=kept[:, 4].astype(np.float64),
                    labels=[self.classes[int(label) - 1] for label in kept[:, 5]],
                )
            )
        return out

    def predict(self, frame: pd.DataFrame, source: str = "input") -> pd.DataFrame:
        """Masks (a row per image) or boxes (a row per box) as a table; see the module."""
        import pandas as pd

        if self.kind == "segmentation":
            masks = self.masks(frame, source)
            return pd.DataFrame(
                {
                    "mask": [mask_png(m) for m in masks],
                    "height": [m.shape[0] for m in masks],
                    "width": [m.shape[1] for m in masks],
                },
                columns=list(MASK_COLUMNS),
            )
        rows: list[dict[str, Any]] = []
        for row, found in enumerate(self.detections(frame, source)):
            for box, score, label in zip(found.boxes, found.scores, found.labels, strict=True):
                x_min, y_min, x_max, y_max = (float(v) for v in box)
                rows.append(
                    {
                        "row": row,
                        "x_min": x_min,
                        "y_min": y_min,
                        "x_max": x_max,
                        "y_max": y_max,
                        "label": label,
                        "score": float(score),
                    }
                )
        return pd.DataFrame(rows, columns=list(DETECTION_COLUMNS)).astype({"row": "int64"})

    def _require(self, kind: str) -> None:
        if self.kind != kind:
            raise DataError(f"{self.directory}: a {self.kind} package has no {kind} outputs")


def mask_png(mask: np.ndarray) -> bytes:
    """A (height, width) class-id mask as an 8-bit grayscale PNG's bytes."""
    buffer = io.BytesIO()
    pillow().fromarray(np.ascontiguousarray(mask, dtype=np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def is_scene(payload: Path) -> bool:
    """Whether the payload folder ``payload`` is a segmentation or detection package's."""
    return _read_json(payload / PACKAGE_FILE).get("kind") in SCENE_KINDS
