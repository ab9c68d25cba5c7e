"""Decoding: image bytes or stored arrays to uint8 (C, H, W) at the fitted channels and size.

One path for every image, in training, evaluation and prediction: Pillow decodes (EXIF
orientation applied, 16-bit scaled to 8 bits) to grayscale or RGB, then the image is brought to
the fitted channel count and resized to cover the fitted size, then center-cropped to it. Also
here: reading only the headers (sizes, channels, hashes) for streamed data, and the per-channel
statistics normalisation uses.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mlsmith.data.images.sources import ARRAY, PATH
from mlsmith.errors import DataError, MissingExtraError

if TYPE_CHECKING:
    import pandas as pd

# Pillow modes that are one channel of intensity.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"})


def require_vision() -> None:
    """Raise a MissingExtraError unless torchvision and Pillow are installed."""
    try:
        import PIL.Image  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        raise MissingExtraError("torchvision", "vision", "Image data") from None


def decode_bytes(data: bytes, name: str, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Image file bytes to uint8 (C, H, W), C 1 (grayscale) or 3 (RGB), EXIF orientation applied.

    With ``size``, JPEGs are decoded at a reduced scale still covering it (Pillow's draft).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

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
    tensor = torch.from_numpy(pixels)
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)


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


def fit_image(
    image: torch.Tensor, channels: int | None, size: tuple[int, int] | None
) -> torch.Tensor:
    """uint8 (c, h, w) to the fitted channel count and size: resized so it covers ``size``
    (aspect ratio kept), then center-cropped. ``None`` keeps what is there."""
    from torchvision.transforms.v2 import functional as F

    if channels == 1 and image.shape[-3] == 3:
        image = F.rgb_to_grayscale(image)
    elif channels == 3 and image.shape[-3] == 1:
        image = image.expand(*image.shape[:-3], 3, -1, -1)
    if size is not None and tuple(image.shape[-2:]) != size:
        height, width = image.shape[-2:]
        scale = max(size[0] / height, size[1] / width)
        covering = [max(size[0], round(height * scale)), max(size[1], round(width * scale))]
        image = F.resize(image, covering, antialias=True)
        image = F.center_crop(image, list(size))
    return image.contiguous()


def decode_file(path: str, channels: int | None, size: tuple[int, int] | None) -> torch.Tensor:
    """The image file at ``path`` as uint8 (C, H, W) at the fitted channels and size."""
    return fit_image(decode_bytes(read_file(path), path, size), channels, size)


def parallel_map(function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``[function(x) for x in items]`` in threads (Pillow and torch release the GIL); the first
    error cancels what has not started yet."""
    pool = ThreadPoolExecutor(max(2, min(16, os.cpu_count() or 1)))
    try:
        return list(pool.map(function, items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def decode_rows(
    frame: pd.DataFrame, channels: int | None, size: tuple[int, int] | None
) -> tuple[list[torch.Tensor], list[str] | None]:
    """Every row's image (channels/size fitted where given) and, for files, each file's sha256."""
    if ARRAY in frame.columns:
        if len(frame) == 0:
            return [], None
        stacked = torch.from_numpy(np.stack(frame[ARRAY].to_list()))
        return list(fit_image(stacked, channels, size).unbind(0)), None

    def one(path: str) -> tuple[torch.Tensor, str]:
        data = read_file(path)
        image = fit_image(decode_bytes(data, path, size), channels, size)
        return image, hashlib.sha256(data).hexdigest()

    results = parallel_map(one, frame[PATH].astype(str).tolist())
    return [image for image, _ in results], [digest for _, digest in results]


def stack_images(images: Sequence[torch.Tensor], channels: int) -> torch.Tensor:
    """Same-sized uint8 images to (N, C, H, W); grayscale ones repeated to 3 channels if asked."""
    if not images:
        return torch.empty((0, channels, 1, 1), dtype=torch.uint8)
    height, width = images[0].shape[-2:]
    out = torch.empty((len(images), channels, height, width), dtype=torch.uint8)
    for i, image in enumerate(images):
        out[i].copy_(fit_image(image, channels, None))
    return out


def scan_files(paths: list[str]) -> tuple[list[str], list[tuple[int, int]], list[int]]:
    """sha256, (height, width) as decoded and native channel count of every file, from headers."""
    from PIL import Image, UnidentifiedImageError

    def one(path: str) -> tuple[str, tuple[int, int], int]:
        data = read_file(path)
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated a quarter turn
                    width, height = height, width
                channels = 1 if image.mode in GRAY_MODES else 3
        except (
            UnidentifiedImageError,
            OSError,
            ValueError,
            SyntaxError,
            Image.DecompressionBombError,
        ) as exc:
            raise DataError(f"{path}: cannot be read as an image ({exc})") from None
        return hashlib.sha256(data).hexdigest(), (height, width), channels

    results = parallel_map(one, paths)
    return [r[0] for r in results], [r[1] for r in results], [r[2] for r in results]


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 (N, C, H, W) images scaled to [0, 1]."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for chunk in images.split(256):
        values = chunk.transpose(0, 1).reshape(channels, -1).double() / 255.0
        total += values.sum(dim=1)
        squares += values.square().sum(dim=1)
        count += values.shape[1]
    mean = total / max(count, 1)
    var = (squares / max(count, 1) - mean.square()).clamp(min=0.0)
    std = torch.where(var.sqrt() > 1e-6, var.sqrt(), torch.ones_like(var))
    return mean.tolist(), std.tolist()
