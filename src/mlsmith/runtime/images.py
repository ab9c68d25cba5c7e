"""Image inputs: file bytes, paths or stored arrays to uint8 (N, C, H, W) at the fitted size.

One path for every image in training, evaluation, prediction and every model package: Pillow
decodes (EXIF orientation applied, 16-bit scaled to 8 bits) to grayscale or RGB, the image is
brought to the fitted channel count (Pillow's luma for RGB to gray), resized with Pillow's
antialiased bilinear filter so it covers the fitted size (aspect ratio kept), then
center-cropped. Being the same code everywhere, a package's pixels are the training pixels
exactly; normalisation happens inside the exported network.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DataError, MissingExtraError
from .frames import require_columns

if TYPE_CHECKING:
    import pandas as pd

# The columns raw image rows come in: a file path (or the file's bytes), or decoded pixels.
PATH = "path"
ARRAY = "image"
# Pillow modes that are one channel of intensity.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"})


def pillow() -> Any:
    """The ``PIL.Image`` module, or a MissingExtraError saying how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise MissingExtraError("pillow", "vision", "Image data") from None
    return Image


def decode_bytes(data: bytes, name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """Image file bytes to uint8 (C, H, W), C 1 (grayscale) or 3 (RGB), EXIF orientation applied.

    With ``size``, JPEGs are decoded at a reduced scale still covering it (Pillow's draft).
    """
    Image = pillow()
    from PIL import ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            if size is not None:
                opened.draft(None, (max(size), max(size)))
            image = ImageOps.exif_transpose(opened)
            pixels = _pixels(image)
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    ) as exc:
        raise DataError(f"{name}: cannot be read as an image ({exc})") from None
    return pixels[None] if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _pixels(image: Any) -> np.ndarray:
    """A Pillow image as uint8 (H, W) or (H, W, 3)."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit (or wider) grayscale: scale to 8 bits instead of clipping as convert("L") does.
        wide = np.asarray(image).astype(np.int64)
        top = 65535 if mode.startswith("I;16") or wide.max(initial=0) > 255 else 255
        return np.clip((wide * 255 + top // 2) // top, 0, 255).astype(np.uint8)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # what Pillow asks for palettes with transparency
    if image.mode not in ("L", "RGB"):
        image = image.convert("L" if image.mode in GRAY_MODES else "RGB")
    return np.array(image, dtype=np.uint8)


def read_file(path: str) -> bytes:
    """The file's bytes; a DataError naming it when it is missing or unreadable."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc.strerror or exc}") from None


def fit_image(image: np.ndarray, channels: int | None, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 (c, h, w) to the fitted channel count and size: resized so it covers ``size``
    (aspect ratio kept), then center-cropped. ``None`` keeps what is there."""
    if channels == 1 and image.shape[0] == 3:
        Image = pillow()
        rgb = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)), "RGB")
        image = np.array(rgb.convert("L"))[None]
    elif channels == 3 and image.shape[0] == 1:
        image = np.repeat(image, 3, axis=0)
    if size is not None and tuple(image.shape[1:]) != tuple(size):
        height, width = image.shape[1:]
        scale = max(size[0] / height, size[1] / width)
        covering = (max(size[0], round(height * scale)), max(size[1], round(width * scale)))
        image = _center_crop(_resize(image, covering), size)
    return np.ascontiguousarray(image, dtype=np.uint8)


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pillow's antialiased bilinear resize of uint8 (C, H, W) to (C, *size), channel by channel."""
    Image = pillow()
    height, width = size
    planes = [
        np.asarray(Image.fromarray(plane, "L").resize((width, height), Image.BILINEAR))
        for plane in image
    ]
    return np.stack(planes)


def _center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    # The offsets torchvision's center_crop uses (Python's round, half to even).
    top = round((image.shape[1] - size[0]) / 2.0)
    left = round((image.shape[2] - size[1]) / 2.0)
    return image[:, top : top + size[0], left : left + size[1]]


def parallel_map(function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``[function(x) for x in items]`` in threads (Pillow releases the GIL); the first error
    cancels what has not started yet."""
    pool = ThreadPoolExecutor(max(2, min(16, os.cpu_count() or 1)))
    try:
        return list(pool.map(function, items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def read_images(
    frame: pd.DataFrame, source: str, channels: int | None, size: tuple[int, int] | None = None
) -> list[np.ndarray]:
    """Each row's image as uint8 (C, h, w) at ``channels`` (and ``size``; ``None`` keeps what
    is there). Rows hold a ``path`` column (file paths, or the files' bytes) or an ``image``
    column of decoded uint8 arrays."""
    if ARRAY in frame.columns:
        return [
            _array(value, f"{source}: row {i}", channels, size)
            for i, value in enumerate(frame[ARRAY])
        ]
    require_columns(frame, [PATH], source, "image path")
    return parallel_map(lambda value: _decoded(value, channels, size), frame[PATH].tolist())


def _decoded(value: Any, channels: int | None, size: tuple[int, int] | None) -> np.ndarray:
    if isinstance(value, (bytes, bytearray, memoryview)):
        data, name = bytes(value), "image bytes"
    else:
        data, name = read_file(str(value)), str(value)
    return fit_image(decode_bytes(data, name, size), channels, size)


def _array(
    value: Any, where: str, channels: int | None, size: tuple[int, int] | None
) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and array.shape[-1] in (1, 3) and array.shape[0] not in (1, 3):
        array = array.transpose(2, 0, 1)  # (H, W, C) as most libraries hold pixels
    if array.ndim != 3 or array.shape[0] not in (1, 3) or array.dtype != np.uint8:
        raise DataError(
            f"{where}: expected uint8 pixels (H, W), (C, H, W) or (H, W, C) with C 1 or 3, "
            f"found {array.dtype} {tuple(array.shape)}"
        )
    return fit_image(array, channels, size)


class ImageEncoder:
    """The fitted channel count and size, and the rows-to-pixels transform they define."""

    def __init__(self, *, channels: int, height: int, width: int) -> None:
        self.channels = channels
        self.size = (height, width)

    def transform(self, frame: pd.DataFrame, source: str = "input") -> dict[str, np.ndarray]:
        """Rows to ``{"image": uint8 (N, C, H, W)}`` (see :func:`read_images`)."""
        images = read_images(frame, source, self.channels, self.size)
        out = np.empty((len(images), self.channels, *self.size), dtype=np.uint8)
        for i, image in enumerate(images):
            out[i] = image
        return {"image": out}
