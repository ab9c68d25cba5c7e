"""Prediction for detection and segmentation runs: images in, boxes or masks out, in each image's
own pixels (see :mod:`mlsmith.runtime.scenes` for how the canvas maps back).

Detections are written as a CSV (one row per box: ``image, x_min, y_min, x_max, y_max, label,
score``) or as COCO results JSON (``image_id, file_name, category_id, bbox, score``, the format
COCO's own evaluation reads). Masks are written as PNG files of class ids, one per image with
its file stem, into a folder. Images are predicted ``chunk_rows`` at a time, and the output
appears in one rename at the end.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.errors import ConfigError
from mlsmith.files import atomic_path
from mlsmith.runtime.scenes import unplace_boxes, unplace_mask

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.models.base import Model

DETECTION_COLUMNS = ("image", "x_min", "y_min", "x_max", "y_max", "label", "score")
DETECTION_SUFFIXES = (".csv", ".json")


def detections_frame(model: Model, frame: pd.DataFrame) -> pd.DataFrame:
    """Every detection of the images in ``frame`` (a ``path`` column), one row per box, in each
    image's own pixels, most confident first within an image."""
    import pandas as pd

    inputs = model.preprocessor.transform(frame, "input")
    decoded = model.predict(inputs) if len(frame) else np.zeros((0, 1, 6), np.float32)
    classes = model.task.classes
    rows: list[dict[str, Any]] = []
    for path, found, geometry in zip(frame["path"], decoded, inputs["geometry"], strict=True):
        kept = found[found[:, 5] > 0]
        boxes = unplace_boxes(kept[:, :4], geometry)
        for box, score, label in zip(boxes, kept[:, 4], kept[:, 5], strict=True):
            rows.append(
                {
                    "image": str(path),
                    "x_min": float(box[0]),
                    "y_min": float(box[1]),
                    "x_max": float(box[2]),
                    "y_max": float(box[3]),
                    "label": classes[int(label) - 1],
                    "score": float(score),
                }
            )
    return pd.DataFrame(rows, columns=list(DETECTION_COLUMNS))


def masks_frame(model: Model, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame``'s images with a ``mask`` column: each image's predicted uint8 (H, W) class ids."""
    inputs = model.preprocessor.transform(frame, "input")
    decoded = model.predict(inputs) if len(frame) else np.zeros((0, 1, 1), np.uint8)
    masks = [unplace_mask(m, g) for m, g in zip(decoded, inputs["geometry"], strict=True)]
    out = frame[["path"]].copy()
    out["mask"] = masks
    return out


def predict_scenes(model: Model, frame: pd.DataFrame) -> pd.DataFrame:
    """The in-memory prediction of a scene run (detections, or masks) for ``frame``'s images."""
    if model.task.kind == "detection":
        return detections_frame(model, frame)
    return masks_frame(model, frame)


def predict_scene_files(
    model: Model, input_path: str, output_path: Path, *, chunk_rows: int = 256
) -> int:
    """Predict every image of ``input_path`` (a folder or one image) into ``output_path``;
    returns the number of images."""
    frame = model.preprocessor.read(str(input_path))
    chunks = [frame.iloc[i : i + chunk_rows] for i in range(0, len(frame), chunk_rows)]
    if model.task.kind == "detection":
        _write_detections(model, chunks, output_path)
    else:
        _write_masks(model, chunks, output_path)
    return len(frame)


def _write_detections(model: Model, chunks: list[pd.DataFrame], output: Path) -> None:
    suffix = output.suffix.lower()
    if suffix not in DETECTION_SUFFIXES:
        raise ConfigError(
            f"--output {output}: detections are written as .csv (a row per box) or .json (COCO "
            f"results), found '{suffix or 'no suffix'}'"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    classes = model.task.classes
    with atomic_path(output) as temporary, open(temporary, "w", encoding="utf-8") as out:
        if suffix == ".csv":
            out.write(",".join(DETECTION_COLUMNS) + "\n")
        else:
            out.write("[")
        first, image_id = True, 0
        for chunk in chunks:
            found = detections_frame(model, chunk)
            if suffix == ".csv":
                buffer = io.StringIO()
                found.to_csv(buffer, index=False, header=False)
                out.write(buffer.getvalue())
                continue
            ids = {path: image_id + 1 + i for i, path in enumerate(chunk["path"].astype(str))}
            image_id += len(chunk)
            for row in found.itertuples(index=False):
                entry = {
                    "image_id": ids[row.image],
                    "file_name": os.path.basename(row.image),
                    "category_id": classes.index(row.label) + 1,
                    "bbox": [
                        round(row.x_min, 2),
                        round(row.y_min, 2),
                        round(row.x_max - row.x_min, 2),
                        round(row.y_max - row.y_min, 2),
                    ],
                    "score": round(row.score, 5),
                }
                out.write(("" if first else ",") + "\n" + json.dumps(entry))
                first = False
        if suffix == ".json":
            out.write("\n]\n")


def _write_masks(model: Model, chunks: list[pd.DataFrame], output: Path) -> None:
    """One PNG of class ids per image, into the folder ``output``; the folder appears whole (an
    existing one is replaced only once every mask is written)."""
    from PIL import Image

    if output.suffix.lower() in (".csv", ".parquet", ".json"):
        raise ConfigError(
            f"--output {output}: masks are written as PNG files into a folder; give a folder path"
        )
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output}: a file is there; masks go into a folder")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        for chunk in chunks:
            for path, mask in zip(chunk["path"], masks_frame(model, chunk)["mask"], strict=True):
                Image.fromarray(np.ascontiguousarray(mask), "L").save(
                    staging / (Path(path).stem + ".png")
                )
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
