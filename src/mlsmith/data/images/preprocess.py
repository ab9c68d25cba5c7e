"""The fitted image preprocessing: classes, size, channels and mean/std from the training split,
with the augmentation and caching settings it batches with. Saved as plain JSON."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.config import AugmentConfig
from mlsmith.data.base import Preprocessor
from mlsmith.data.batches import BatchOptions, TensorBatches
from mlsmith.data.images.augment import Normalize, build_augment
from mlsmith.data.images.batches import ImageBatches, StreamBatches
from mlsmith.data.images.decode import decode_rows, require_vision, stack_images
from mlsmith.data.images.sources import ARRAY, PATH, Sources
from mlsmith.errors import DataError
from mlsmith.runtime.frames import require_columns

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.tasks import Task


class ImagePreprocessor(Preprocessor):
    """Classes, size, channels and normalisation fitted on the training split; the
    augmentation and caching settings it batches with."""

    kind = "image"
    output_columns = (PATH,)
    target_role = "label"

    def __init__(
        self,
        *,
        target: str,
        task: Task,
        height: int,
        width: int,
        channels: int,
        mean: list[float],
        std: list[float],
        augment: dict[str, Any],
        path_column: str = "path",
        image_key: str = "images",
        cache: str = "auto",
        cache_limit_mb: int = 2048,
        num_workers: int = 2,
    ) -> None:
        super().__init__(target=target, task=task)
        self.height = height
        self.width = width
        self.channels = channels
        self.mean = [float(v) for v in mean] * (channels if len(mean) == 1 else 1)
        self.std = [float(v) for v in std] * (channels if len(std) == 1 else 1)
        self.augment = AugmentConfig.model_validate(augment)
        self.path_column = path_column
        self.image_key = image_key
        self.cache = cache
        self.cache_limit_mb = cache_limit_mb
        self.num_workers = num_workers
        self.sources = Sources(target, path_column, image_key)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) every image is brought to."""
        return (self.height, self.width)

    def read(self, path: str) -> pd.DataFrame:
        """A folder (recursively, class subfolders optional), a table of paths, an .npz or an
        image file, as a frame with a ``path`` column."""
        return self.sources.read(path)

    def iter_read(self, path: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
        return self.sources.iter_read(path, chunk_rows)

    def streams(self, n_images: int) -> bool:
        """Whether ``n_images`` are streamed rather than decoded into memory."""
        return cache_mode(self.cache, self.cache_limit_mb, n_images, self.channels, self.size) == (
            "stream"
        )

    def transform(self, frame: pd.DataFrame, source: str = "input") -> dict[str, np.ndarray]:
        """Rows to ``{"image": uint8 (N, C, H, W)}``, or, streaming, to what workers decode:
        ``{"path": file names}`` or ``{"array": stored pixels}``."""
        if ARRAY in frame.columns:
            if self.streams(len(frame)):
                return {"array": np.stack(frame[ARRAY].to_list())}
        else:
            require_columns(frame, [PATH], source, "image path")
            if self.streams(len(frame)):
                return {"path": frame[PATH].astype(str).to_numpy(dtype=object)}
        images, _ = decode_rows(frame, self.channels, self.size)
        return {"image": stack_images(images, self.channels).numpy()}

    def labelled_rows(self, frame: pd.DataFrame, source: str) -> pd.DataFrame:
        if self.target not in frame.columns and "loose" in frame.attrs:
            raise DataError(
                f"{source}: no labels: '{frame.attrs['loose']}' is not in a class subfolder; "
                "labelled image folders hold one subfolder per class"
            )
        return super().labelled_rows(frame, source)

    def batches(
        self, inputs: dict[str, np.ndarray], target: np.ndarray | None, options: BatchOptions
    ) -> TensorBatches:
        """Slices of the uint8 cache (``image`` inputs) or streamed samples (``path`` or
        ``array`` inputs); augmented when ``options.train``, normalised either way."""
        augment = build_augment(self.augment, self.size, self.channels) if options.train else None
        normalize = Normalize(self.mean, self.std)
        if "image" in inputs:
            return ImageBatches(inputs, target, options, normalize=normalize, augment=augment)
        source = inputs["path"] if "path" in inputs else inputs["array"]
        return StreamBatches(
            source,
            target,
            options,
            channels=self.channels,
            size=self.size,
            normalize=normalize,
            augment=augment,
            num_workers=self.num_workers,
        )

    def model_inputs(self) -> dict[str, Any]:
        return {"channels": self.channels, "height": self.height, "width": self.width}

    def fitted_state(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "mean": self.mean,
            "std": self.std,
            "augment": self.augment.model_dump(mode="json"),
            "path_column": self.path_column,
            "image_key": self.image_key,
            "cache": self.cache,
            "cache_limit_mb": self.cache_limit_mb,
            "num_workers": self.num_workers,
        }


def load_preprocessor(directory: Path) -> ImagePreprocessor:
    """The preprocessor saved in a run directory."""
    require_vision()
    return ImagePreprocessor.load(directory)


def cache_mode(
    cache: str, limit_mb: int, n_images: int, channels: int, size: tuple[int, int]
) -> str:
    """``memory`` or ``stream`` for ``n_images`` of this shape under the ``cache`` setting."""
    if cache != "auto":
        return cache
    return "memory" if n_images * channels * size[0] * size[1] <= limit_mb * 2**20 else "stream"
