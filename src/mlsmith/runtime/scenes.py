"""Fitting images of any size onto one canvas, and mapping predictions back (NumPy and Pillow).

Detection and segmentation networks see every image on one fixed canvas (H, W): an image is
scaled by ``s`` (so it fits, its aspect ratio kept) and padded at the bottom and right. Padding,
not stretching, keeps shapes as they are; padding at the far edges keeps box coordinates as they
were, only multiplied by ``s``. A mask is scaled with nearest-neighbour (class ids stay class
ids) and padded with the ignore index, so padding never counts in a loss or a metric.

Each placed image's geometry, (height, width, scale) as found, goes with it, so predictions
map back: boxes divided by ``s``, masks cropped to the scaled image and resized to its own size.
Training, evaluation and prediction all place images here, so they see the same pixels.
"""

from __future__ import annotations

import numpy as np

from .images import pillow

IGNORE_INDEX = 255


def canvas_scale(height: int, width: int, canvas: tuple[int, int], fixed: bool) -> float:
    """The factor an image of ``height`` x ``width`` is scaled by to sit on ``canvas``.

    ``fixed`` (``data.image_size`` set): scaled so it fits exactly (up or down). Otherwise
    images keep their size, and one larger than the canvas (seen first at prediction) shrinks.
    """
    fit = min(canvas[0] / height, canvas[1] / width)
    return fit if fixed else min(1.0, fit)


def _scaled(height: int, width: int, scale: float, canvas: tuple[int, int]) -> tuple[int, int]:
    return (
        min(canvas[0], max(1, round(height * scale))),
        min(canvas[1], max(1, round(width * scale))),
    )


def place_image(image: np.ndarray, canvas: tuple[int, int], scale: float) -> np.ndarray:
    """uint8 (C, h, w) scaled by ``scale`` (bilinear, antialiased) and padded with zeros to
    (C, *canvas)."""
    channels, height, width = image.shape
    size = _scaled(height, width, scale, canvas)
    if size != (height, width):
        Image = pillow()
        image = np.stack(
            [
                np.asarray(Image.fromarray(plane, "L").resize(size[::-1], Image.BILINEAR))
                for plane in image
            ]
        )
    out = np.zeros((channels, *canvas), dtype=np.uint8)
    out[:, : size[0], : size[1]] = image
    return out


def place_mask(mask: np.ndarray, canvas: tuple[int, int], scale: float) -> np.ndarray:
    """uint8 (h, w) class ids scaled by ``scale`` (nearest) and padded with the ignore index."""
    height, width = mask.shape
    size = _scaled(height, width, scale, canvas)
    if size != (height, width):
        Image = pillow()
        mask = np.asarray(Image.fromarray(mask, "L").resize(size[::-1], Image.NEAREST))
    out = np.full(canvas, IGNORE_INDEX, dtype=np.uint8)
    out[: size[0], : size[1]] = mask
    return out


def unplace_mask(mask: np.ndarray, geometry: np.ndarray) -> np.ndarray:
    """A predicted (H, W) canvas mask back to its image's own (height, width)."""
    height, width, scale = int(geometry[0]), int(geometry[1]), float(geometry[2])
    size = _scaled(height, width, scale, mask.shape)
    cropped = np.ascontiguousarray(mask[: size[0], : size[1]], dtype=np.uint8)
    if size == (height, width):
        return cropped
    Image = pillow()
    return np.asarray(Image.fromarray(cropped, "L").resize((width, height), Image.NEAREST))


def unplace_boxes(boxes: np.ndarray, geometry: np.ndarray) -> np.ndarray:
    """Canvas boxes (N, 4) x_min, y_min, x_max, y_max back to the image's own pixels, clipped
    to it."""
    height, width, scale = float(geometry[0]), float(geometry[1]), float(geometry[2])
    out = np.asarray(boxes, dtype=np.float64) / scale
    out[:, 0::2] = out[:, 0::2].clip(0.0, width)
    out[:, 1::2] = out[:, 1::2].clip(0.0, height)
    return out


def place_images(
    images: list[np.ndarray], canvas: tuple[int, int], channels: int, fixed: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Decoded uint8 (C, h, w) images on the canvas (N, C, H, W), with each one's geometry
    (N, 3): height, width and scale as found."""
    stacked = np.zeros((len(images), channels, *canvas), dtype=np.uint8)
    geometry = np.zeros((len(images), 3), dtype=np.float32)
    for i, image in enumerate(images):
        height, width = image.shape[1:]
        scale = canvas_scale(height, width, canvas, fixed)
        stacked[i] = place_image(image, canvas, scale)
        geometry[i] = (height, width, scale)
    return stacked, geometry
