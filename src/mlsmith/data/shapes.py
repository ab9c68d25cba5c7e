"""A generated dataset for detection and segmentation: circles, squares and triangles of random
size and colour on noisy backgrounds, with exact boxes and masks.

Every scene is drawn from a seed, so the same call writes the same files anywhere, offline.
Shapes never overlap or touch (placement is rejection-sampled; their boxes may overlap where a
circle's or triangle's corner is empty), so each one's box is exactly the tight bounds of its
pixels: a box is ``[x_min, y_min, x_max, y_max]`` in pixel-edge
coordinates (COCO's), the mask holds the class id per pixel (0: background).

``write_shapes(root, n)`` writes what the detection and segmentation data kinds read:

- ``images/NNNN.png`` (RGB);
- ``masks/NNNN.png`` (one class id per pixel, 8-bit grayscale);
- ``annotations.json`` (COCO: images, annotations with ``bbox`` as ``[x, y, w, h]``,
  categories 1-3);
- ``boxes.csv`` (``image, x_min, y_min, x_max, y_max, label``, one row per shape).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlsmith.files import atomic_path, write_text

CLASSES = ("circle", "square", "triangle")  # class ids 1, 2, 3; 0 is the background
IMAGES_DIR, MASKS_DIR = "images", "masks"
COCO_FILE, CSV_FILE = "annotations.json", "boxes.csv"


@dataclass(frozen=True)
class Scene:
    """One generated image with its exact targets."""

    image: np.ndarray  # uint8 (H, W, 3)
    mask: np.ndarray  # uint8 (H, W): class id per pixel, 0 background
    instances: np.ndarray  # uint8 (H, W): shape i's pixels hold i + 1, 0 background
    boxes: np.ndarray  # float32 (N, 4): x_min, y_min, x_max, y_max (pixel edges)
    labels: np.ndarray  # int64 (N,): class ids 1..3


def _shape_pixels(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size) boolean footprint of one shape filling its square."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    if kind == "circle":
        r = size / 2
        return (x - r) ** 2 + (y - r) ** 2 <= r * r
    if kind == "square":
        return np.ones((size, size), dtype=bool)
    # A triangle with its base on the bottom edge and its apex somewhere on the top edge.
    apex = rng.uniform(0.2, 0.8) * size
    left = x >= apex * (1 - y / size)  # right of the edge from (0, size) to (apex, 0)
    right = x <= apex + (size - apex) * (
        y / size
    )  # left of the edge from (apex, 0) to (size, size)
    return left & right


def draw_scene(
    rng: np.random.Generator,
    size: int = 64,
    max_shapes: int = 3,
    min_side: int = 10,
    max_side: int = 28,
) -> Scene:
    """One scene of 1..``max_shapes`` non-overlapping shapes on a noisy background."""
    background = rng.uniform(40, 215)
    image = np.clip(rng.normal(background, 18, size=(size, size, 3)), 0, 255)
    mask = np.zeros((size, size), dtype=np.uint8)
    instances = np.zeros((size, size), dtype=np.uint8)
    taken = np.zeros((size, size), dtype=bool)
    boxes: list[list[int]] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(30):
            side = int(rng.integers(min_side, min(max_side, size) + 1))
            top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            label = int(rng.integers(1, len(CLASSES) + 1))
            footprint = _shape_pixels(CLASSES[label - 1], side, rng)
            # A one-pixel margin: touching shapes would merge into one blob in the mask.
            window = taken[max(top - 1, 0) : top + side + 1, max(left - 1, 0) : left + side + 1]
            if window.any():
                continue
            region = (slice(top, top + side), slice(left, left + side))
            # A colour far enough from the background to be seen.
            colour = rng.uniform(0, 255, size=3)
            while abs(colour.mean() - background) < 45:
                colour = rng.uniform(0, 255, size=3)
            image[region][footprint] = np.clip(
                rng.normal(colour, 8, size=(footprint.sum(), 3)), 0, 255
            )
            mask[region][footprint] = label
            instances[region][footprint] = len(labels) + 1
            taken[region] |= footprint
            rows, cols = np.nonzero(footprint)
            boxes.append(
                [left + cols.min(), top + rows.min(), left + cols.max() + 1, top + rows.max() + 1]
            )
            labels.append(label)
            break
    return Scene(
        image=image.astype(np.uint8),
        mask=mask,
        instances=instances,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
    )


def write_shapes(root: str | Path, n: int = 200, *, size: int = 64, seed: int = 0) -> Path:
    """Write ``n`` scenes under ``root`` (see the module); returns ``root``."""
    from PIL import Image

    root = Path(root)
    (root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (root / MASKS_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    coco: dict[str, list[dict[str, object]]] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)],
    }
    rows: list[list[object]] = []
    for index in range(n):
        scene = draw_scene(rng, size)
        name = f"{index:04d}.png"
        for folder, pixels in ((IMAGES_DIR, scene.image), (MASKS_DIR, scene.mask)):
            with atomic_path(root / folder / name) as tmp:
                Image.fromarray(pixels).save(tmp, format="PNG")
        coco["images"].append({"id": index + 1, "file_name": name, "width": size, "height": size})
        for box, label in zip(scene.boxes.tolist(), scene.labels.tolist(), strict=True):
            x0, y0, x1, y1 = box
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": index + 1,
                    "category_id": label,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float(((scene.mask == label) & _box_region(scene.mask, box)).sum()),
                    "iscrowd": 0,
                }
            )
            rows.append([name, x0, y0, x1, y1, CLASSES[label - 1]])
    write_text(root / COCO_FILE, json.dumps(coco))
    with atomic_path(root / CSV_FILE) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "x_min", "y_min", "x_max", "y_max", "label"])
        writer.writerows(rows)
    return root


def _box_region(mask: np.ndarray, box: list[float]) -> np.ndarray:
    region = np.zeros(mask.shape, dtype=bool)
    x0, y0, x1, y1 = (int(v) for v in box)
    region[y0:y1, x0:x1] = True
    return region
