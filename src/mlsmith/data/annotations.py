"""Object boxes and class masks as the detection and segmentation data kinds read them.

Boxes (``data.annotations``): a COCO JSON file (``images``, ``annotations`` with ``bbox`` as
``[x, y, width, height]``, ``categories``), or a CSV with one row per box: ``image, x_min,
y_min, x_max, y_max, label`` (a row with the box cells empty lists an image without objects).
Either way they become :class:`BoxAnnotations`: per image its file, size, boxes as ``[x_min,
y_min, x_max, y_max]`` in pixel-edge coordinates and labels ``1..C`` (0 is the background, as
torchvision's detection models expect), with the class names in label order.

Masks (``data.masks``): a folder of PNGs with the images' file stems, holding a class id per
pixel (8-bit grayscale or a palette image's indices), or, with ``classes`` given as colours, an
RGB image whose colours map to classes. 255 marks pixels to ignore (VOC's convention).

Every problem is a :class:`~mlsmith.errors.DataError` naming the file, the image or
annotation, what was expected and what was found.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlsmith.errors import DataError

IGNORE_INDEX = 255
CSV_COLUMNS = ("image", "x_min", "y_min", "x_max", "y_max", "label")
# A box may poke out of its image by this many pixels (rounding in annotation tools); it is
# clipped. Beyond that it is an error.
EDGE_TOLERANCE = 1.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageBoxes:
    """One image's objects."""

    file: str  # relative to the image folder
    width: int
    height: int
    boxes: np.ndarray  # float32 (N, 4): x_min, y_min, x_max, y_max
    labels: np.ndarray  # int64 (N,): 1..C


@dataclass(frozen=True)
class BoxAnnotations:
    """Every image's objects, and the class names (label ``i`` is ``classes[i - 1]``)."""

    images: list[ImageBoxes]
    classes: list[str]


def read_annotations(path: str | Path, image_dir: str | Path) -> BoxAnnotations:
    """The boxes in ``path`` (COCO ``.json`` or ``.csv``) for the images under ``image_dir``."""
    file, folder = Path(path), Path(image_dir)
    if not file.is_file():
        raise DataError(f"{file}: annotations file not found (data.annotations)")
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found (data.path)")
    suffix = file.suffix.lower()
    if suffix == ".json":
        return read_coco(file, folder)
    if suffix == ".csv":
        return read_box_csv(file, folder)
    raise DataError(
        f"{file}: data.annotations must be a COCO .json file or a .csv of boxes, found "
        f"'{suffix or 'no suffix'}'"
    )


def read_coco(file: Path, folder: Path) -> BoxAnnotations:
    """A COCO detection file: categories keep their order by id; labels are 1..C."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{file}: not a readable JSON file ({error})") from None
    if not isinstance(data, dict):
        raise DataError(
            f"{file}: expected a COCO object with 'images', found {type(data).__name__}"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{file}: expected a list '{key}' (COCO format), found none")
    categories = sorted(data["categories"], key=lambda c: _field(c, "id", int, file, "category"))
    label_of = {int(c["id"]): i + 1 for i, c in enumerate(categories)}
    classes = [str(_field(c, "name", str, file, "category")) for c in categories]
    if not classes:
        raise DataError(f"{file}: 'categories' is empty; detection needs at least one class")
    images: dict[int, dict[str, Any]] = {}
    for entry in data["images"]:
        image_id = _field(entry, "id", int, file, "image")
        if image_id in images:
            raise DataError(f"{file}: image id {image_id} appears twice in 'images'")
        images[image_id] = entry
    boxes: dict[int, list[list[float]]] = {i: [] for i in images}
    labels: dict[int, list[int]] = {i: [] for i in images}
    for annotation in data["annotations"]:
        where = f"annotation {annotation.get('id', '?')}"
        image_id = _field(annotation, "image_id", int, file, where)
        if image_id not in images:
            raise DataError(f"{file}: {where} refers to image id {image_id}, not in 'images'")
        category = _field(annotation, "category_id", int, file, where)
        if category not in label_of:
            raise DataError(
                f"{file}: {where} has category_id {category}, not in 'categories' "
                f"({sorted(label_of)})"
            )
        if annotation.get("iscrowd"):
            continue  # crowd regions are not objects to find (COCO's own evaluation skips them)
        bbox = annotation.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise DataError(
                f"{file}: {where}: expected 'bbox' as [x, y, width, height], found {bbox!r}"
            )
        x, y, w, h = (float(v) for v in bbox)
        boxes[image_id].append([x, y, x + w, y + h])
        labels[image_id].append(label_of[category])
    out = []
    for image_id, entry in images.items():
        name = str(_field(entry, "file_name", str, file, f"image {image_id}"))
        width, height = _image_size(folder / name, file, entry)
        out.append(
            _image_boxes(name, width, height, boxes[image_id], labels[image_id], f"{file}: {name}")
        )
    return BoxAnnotations(out, classes)


def read_box_csv(file: Path, folder: Path) -> BoxAnnotations:
    """A CSV of boxes; classes are its labels in sorted order."""
    import pandas as pd

    try:
        frame = pd.read_csv(file, dtype={"image": str, "label": str})
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise DataError(f"{file}: cannot be read as CSV ({error})") from None
    missing = [c for c in CSV_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{file}: missing column(s) {', '.join(missing)}; expected {', '.join(CSV_COLUMNS)}"
        )
    coordinates = ["x_min", "y_min", "x_max", "y_max"]
    for column in coordinates:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    empty = frame[coordinates].isna().all(axis=1)
    partial = frame[coordinates].isna().any(axis=1) & ~empty
    if partial.any():
        row = int(np.flatnonzero(partial.to_numpy())[0]) + 2  # 1-based, after the header
        raise DataError(
            f"{file}: line {row}: a box needs four numbers x_min, y_min, x_max, y_max; "
            "found some missing or not numbers (leave all four empty for an image without objects)"
        )
    unlabelled = ~empty & frame["label"].isna()
    if unlabelled.any():
        row = int(np.flatnonzero(unlabelled.to_numpy())[0]) + 2
        raise DataError(f"{file}: line {row}: a box without a label")
    classes = sorted(frame.loc[~empty, "label"].unique().tolist())
    if not classes:
        raise DataError(f"{file}: no boxes; detection needs at least one labelled box")
    label_of = {name: i + 1 for i, name in enumerate(classes)}
    out = []
    for name, rows in frame.groupby("image", sort=True):
        width, height = _image_size(folder / str(name), file, None)
        boxed = rows.loc[~empty.loc[rows.index]]
        out.append(
            _image_boxes(
                str(name),
                width,
                height,
                boxed[coordinates].to_numpy(np.float64).tolist(),
                [label_of[v] for v in boxed["label"]],
                f"{file}: {name}",
            )
        )
    return BoxAnnotations(out, [str(c) for c in classes])


def write_coco(annotations: BoxAnnotations, path: str | Path) -> None:
    """``annotations`` as a COCO file (read back by :func:`read_coco` to the same boxes)."""
    from mlsmith.files import write_json

    coco: dict[str, list[dict[str, Any]]] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(annotations.classes)],
    }
    for image_id, image in enumerate(annotations.images, start=1):
        coco["images"].append(
            {"id": image_id, "file_name": image.file, "width": image.width, "height": image.height}
        )
        for box, label in zip(image.boxes.tolist(), image.labels.tolist(), strict=True):
            x0, y0, x1, y1 = box
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    write_json(path, coco)


def read_mask(
    path: Path,
    size: tuple[int, int],
    n_classes: int,
    colours: Mapping[tuple[int, int, int], int] | None = None,
) -> np.ndarray:
    """The class-id mask at ``path`` as uint8 (H, W), checked against its image's ``size``
    (width, height) and the class count; ``colours`` maps an RGB mask's colours to class ids."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"{path}: cannot read the mask ({error})") from None
    if image.size != size:
        raise DataError(
            f"{path}: the mask is {image.size[0]}x{image.size[1]} pixels, its image "
            f"{size[0]}x{size[1]}; a mask must match its image"
        )
    if colours is not None:
        rgb = np.asarray(image.convert("RGB"))
        mask = np.full(rgb.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        known = np.zeros(rgb.shape[:2], dtype=bool)
        for colour, class_id in colours.items():
            hit = np.all(rgb == np.asarray(colour, dtype=np.uint8), axis=-1)
            mask[hit], known = class_id, known | hit
        if not known.all():
            stray = tuple(int(v) for v in rgb[~known][0])
            raise DataError(
                f"{path}: colour {stray} is not in data.classes ({len(colours)} colours); "
                "add it, or paint pixels to ignore with a listed colour"
            )
        return mask
    if image.mode not in ("L", "P", "I;16", "I"):
        raise DataError(
            f"{path}: a class-id mask must be grayscale or a palette image, found mode "
            f"'{image.mode}'; for colour masks give data.classes as colours"
        )
    mask_array = np.asarray(image)
    bad = (mask_array >= n_classes) & (mask_array != IGNORE_INDEX)
    if bad.any():
        values = sorted({int(v) for v in np.unique(mask_array[bad])})[:5]
        raise DataError(
            f"{path}: class ids {values} are not below the {n_classes} classes (0 is the "
            f"background; {IGNORE_INDEX} marks pixels to ignore)"
        )
    return mask_array.astype(np.uint8)


def image_files(folder: Path) -> list[str]:
    """The image files directly under ``folder``, sorted."""
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _image_boxes(
    name: str,
    width: int,
    height: int,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    where: str,
) -> ImageBoxes:
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if array.size and not np.isfinite(array).all():
        raise DataError(f"{where}: a box holds a non-finite coordinate")
    for x0, y0, x1, y1 in array.tolist():
        if not (x1 > x0 and y1 > y0):
            raise DataError(
                f"{where}: box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] has no area (x_max must exceed "
                "x_min and y_max y_min)"
            )
        if (
            x0 < -EDGE_TOLERANCE
            or y0 < -EDGE_TOLERANCE
            or x1 > width + EDGE_TOLERANCE
            or y1 > height + EDGE_TOLERANCE
        ):
            raise DataError(
                f"{where}: box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] lies outside the "
                f"{width}x{height} image"
            )
    array[:, [0, 2]] = array[:, [0, 2]].clip(0, width)
    array[:, [1, 3]] = array[:, [1, 3]].clip(0, height)
    return ImageBoxes(
        name,
        width,
        height,
        array.astype(np.float32),
        np.asarray(labels, dtype=np.int64).reshape(-1),
    )


def _image_size(path: Path, source: Path, entry: Mapping[str, Any] | None) -> tuple[int, int]:
    """An image's (width, height): from its header (and, for COCO, checked against the file)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(f"{source}: image '{path.name}' not found in {path.parent}")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"{path}: cannot read the image ({error})") from None
    if entry is not None and "width" in entry and "height" in entry:
        stated = (int(entry["width"]), int(entry["height"]))
        if stated != (width, height):
            raise DataError(
                f"{source}: image '{path.name}' is {width}x{height} pixels, the annotations say "
                f"{stated[0]}x{stated[1]}"
            )
    return width, height


def _field(entry: Any, key: str, kind: type, file: Path, where: str) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise DataError(f"{file}: {where}: missing '{key}'")
    value = entry[key]
    try:
        if kind is int and (isinstance(value, bool) or not float(value).is_integer()):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise DataError(
            f"{file}: {where}: '{key}' should be {kind.__name__}, found {value!r}"
        ) from None


__all__ = [
    "BoxAnnotations",
    "ImageBoxes",
    "image_files",
    "read_annotations",
    "read_box_csv",
    "read_coco",
    "read_mask",
    "write_coco",
]
