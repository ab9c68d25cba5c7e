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
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from mlsmith.errors import DataError, MissingExtraError
from mlsmith.runtime import images as runtime_images
from mlsmith.runtime.images import ARRAY, GRAY_MODES, PATH, parallel_map, read_file

if TYPE_CHECKING:
    import pandas as pd


def require_vision() -> None:
    """Raise a MissingExtraError unless torchvision and Pillow are installed."""
    try:
        import PIL.Image  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        raise MissingExtraError("torchvision", "vision", "Image data") from None


def decode_bytes(data: bytes, name: str, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Image file bytes to uint8 (C, H, W), C 1 (grayscale) or 3 (RGB), EXIF orientation applied."""
    return torch.from_numpy(runtime_images.decode_bytes(data, name, size))


def fit_image(
    image: torch.Tensor, channels: int | None, size: tuple[int, int] | None
) -> torch.Tensor:
    """uint8 (c, h, w), or a batch (n, c, h, w), to the fitted channel count and size (see
    :func:`mlsmith.runtime.images.fit_image`, which every model package runs too)."""
    if image.ndim == 4:
        fitted = [runtime_images.fit_image(one.numpy(), channels, size) for one in image]
        if not fitted:
            return image
        return torch.from_numpy(np.stack(fitted))
    out = runtime_images.fit_image(image.numpy(), channels, size)
    return torch.from_numpy(out if out.flags.writeable else out.copy())


def decode_file(path: str, channels: int | None, size: tuple[int, int] | None) -> torch.Tensor:
    """The image file at ``path`` as uint8 (C, H, W) at the fitted channels and size."""
    return fit_image(decode_bytes(read_file(path), path, size), channels, size)


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
