"""What segmentation and detection data share: a folder of images placed on one canvas, the
fitted preprocessing, and batches whose augmentation moves the targets with the pixels.

Images are decoded once into one uint8 tensor (N, C, H, W) on the canvas of
:mod:`mlsmith.runtime.scenes`, with each image's geometry (height, width, scale) kept beside
it so predictions map back to the image's own pixels. Targets are per image: a (H, W) class-id
mask (segmentation) or a (M, 5) block of boxes with their labels, padded with label-0 rows to
the split's most boxes (detection). The two data kinds (:mod:`.segmentation`,
:mod:`.detection`) add how they read their targets.
"""

from __future__ import annotations

import hashlib
import logging
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from mlsmith.config import Config, SceneDataConfig, SpatialAugmentConfig
from mlsmith.data.annotations import IMAGE_SUFFIXES, image_files
from mlsmith.data.base import Preprocessor, Split
from mlsmith.data.batches import Batch, BatchOptions, TensorBatches
from mlsmith.data.images.augment import Normalize, draw_seeds
from mlsmith.data.images.decode import channel_stats, require_vision
from mlsmith.data.spatial_augment import (
    SpatialAugment,
    Targets,
    Transform,
    augment,
    build_transform,
)
from mlsmith.errors import DataError
from mlsmith.runtime import images as runtime_images
from mlsmith.runtime.scenes import IGNORE_INDEX, place_images
from mlsmith.vision_tasks import scene_task_from_dict

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.tasks import Task

log = logging.getLogger(__name__)

PATH = "path"
S = TypeVar("S", bound="ScenePreprocessor")
GEOMETRY = "geometry"  # (N, 3) float32: each image's height, width and scale onto the canvas


class ScenePreprocessor(Preprocessor):
    """The canvas, channels and normalisation fitted on the training split, and the
    augmentation it batches with; each data kind adds how it reads and encodes targets."""

    output_columns = (PATH,)

    def __init__(
        self,
        *,
        target: str,
        task: Task,
        height: int,
        width: int,
        fixed: bool,
        channels: int,
        mean: list[float],
        std: list[float],
        augment: dict[str, Any],
    ) -> None:
        super().__init__(target=target, task=task)
        self.height = height
        self.width = width
        self.fixed = fixed
        self.channels = channels
        self.mean = [float(v) for v in mean] * (channels if len(mean) == 1 else 1)
        self.std = [float(v) for v in std] * (channels if len(std) == 1 else 1)
        self.augment = SpatialAugmentConfig.model_validate(augment)

    @classmethod
    def from_dict(cls: type[S], state: Mapping[str, Any]) -> S:
        arguments = {k: v for k, v in state.items() if k != "kind"}
        arguments["task"] = scene_task_from_dict(state["task"])
        return cls(**arguments)

    @property
    def canvas(self) -> tuple[int, int]:
        """(height, width) every image is placed on."""
        return (self.height, self.width)

    # --- raw rows -------------------------------------------------------------------------------

    def read(self, path: str) -> pd.DataFrame:
        """A folder of images, or one image file, as a frame with a ``path`` column."""
        return image_frame(path)

    def iter_read(self, path: str, chunk_rows: int) -> Any:
        frame = self.read(path)
        for start in range(0, len(frame), chunk_rows):
            yield frame.iloc[start : start + chunk_rows]

    # --- model inputs ---------------------------------------------------------------------------

    def transform(self, frame: pd.DataFrame, source: str = "input") -> dict[str, np.ndarray]:
        """Rows to ``{"image": uint8 (N, C, H, W) on the canvas, "geometry": (N, 3)}``."""
        if PATH not in frame.columns:
            raise DataError(f"{source}: no '{PATH}' column of image files")
        images = decode_images(frame[PATH].astype(str).tolist(), self.channels)
        return self.place(images)

    def place(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Decoded uint8 (C, h, w) images on the canvas, with their geometry."""
        stacked, geometry = place_images(list(images), self.canvas, self.channels, self.fixed)
        return {"image": stacked, GEOMETRY: geometry}

    def to_split(self, frame: pd.DataFrame, source: str) -> Split:
        inputs = self.transform(frame, source)
        return Split(inputs, self.encode_targets(frame, inputs[GEOMETRY], source))

    @abstractmethod
    def encode_targets(self, frame: pd.DataFrame, geometry: np.ndarray, source: str) -> np.ndarray:
        """Each row's target on the canvas, given where its image was placed."""

    def encode_target(self, frame: pd.DataFrame, source: str) -> np.ndarray:
        return self.encode_targets(frame, self.transform(frame, source)[GEOMETRY], source)

    def batches(
        self, inputs: dict[str, np.ndarray], target: np.ndarray | None, options: BatchOptions
    ) -> TensorBatches:
        """Slices of the uint8 images; augmented (targets moved with them) when
        ``options.train``, normalised either way."""
        transform = None
        if options.train:
            options_ = SpatialAugment(**self.augment.model_dump())
            transform = build_transform(options_, boxes=self.kind == "detection")
        return SceneBatches(
            inputs,
            target,
            options,
            normalize=Normalize(self.mean, self.std),
            transform=transform,
            canvas=self.canvas,
            boxes=self.kind == "detection",
        )

    def model_inputs(self) -> dict[str, Any]:
        return {"channels": self.channels, "height": self.height, "width": self.width}

    def fitted_state(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "width": self.width,
            "fixed": self.fixed,
            "channels": self.channels,
            "mean": self.mean,
            "std": self.std,
            "augment": self.augment.model_dump(mode="json"),
        }


class SceneBatches(TensorBatches):
    """Batches sliced from the uint8 canvas images. A training batch augments each image with
    its target under its own seed (drawn from the batches' generator, so a resume replays it),
    then puts it back on the canvas. A detection batch hands the padded boxes to the network
    as ``boxes`` too: a torchvision detector computes its losses itself."""

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        target: np.ndarray | None,
        options: BatchOptions,
        *,
        normalize: Normalize,
        transform: Transform | None,
        canvas: tuple[int, int],
        boxes: bool,
    ) -> None:
        super().__init__({"image": inputs["image"]}, target, options)
        self.boxes = boxes
        self.normalize = normalize
        self.transform = transform
        self.canvas = canvas
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> SceneBatches:
        """Without augmentation the images move to ``device`` once; with it they stay on the
        CPU, where the per-sample transforms run, and each finished batch moves."""
        self.device = torch.device(device)
        if self.transform is None or self.device.type == "cpu":
            super().to(self.device)
        return self

    def collate(self, inputs: dict[str, torch.Tensor], target: torch.Tensor) -> Batch:
        images = inputs["image"]
        # Targets are (B, M, 5) boxes or (B, H, W) masks; a prediction's placeholder is (B,).
        labelled = target.ndim > 1
        boxes = self.boxes and labelled
        if self.transform is not None and labelled:
            images, target = self._augmented(images, target, boxes)
        images = images.to(self.device, non_blocking=True)
        target = target.to(self.device, non_blocking=True)
        batch = {"image": self.normalize(images)}
        if boxes:
            batch["boxes"] = target
        return batch, target

    def _augmented(
        self, images: torch.Tensor, target: torch.Tensor, boxes: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.transform is not None
        seeds = draw_seeds(self.generator, len(images)).tolist()
        out_images = torch.empty_like(images)
        out_target = torch.empty_like(target) if not boxes else torch.zeros_like(target)
        threads = torch.get_num_threads()
        # One image is far too small to split across threads (as for classification).
        torch.set_num_threads(1)
        try:
            for i, seed in enumerate(seeds):
                if boxes:
                    rows = target[i][target[i, :, 4] > 0]
                    sample = Targets(images[i], boxes=rows[:, :4], labels=rows[:, 4].long())
                else:
                    sample = Targets(images[i], mask=target[i])
                moved = augment(sample, self.transform, seed)
                out_images[i] = _on_canvas(moved.image, self.canvas, 0)
                if boxes:
                    kept = _boxes_on_canvas(moved, self.canvas)
                    out_target[i, : len(kept)] = kept
                else:
                    assert moved.mask is not None
                    out_target[i] = _on_canvas(moved.mask[None], self.canvas, IGNORE_INDEX)[0]
        finally:
            torch.set_num_threads(threads)
        return out_images, out_target


def _on_canvas(image: torch.Tensor, canvas: tuple[int, int], fill: int) -> torch.Tensor:
    """(C, h, w) cut to the canvas at its top-left corner, or padded with ``fill`` to it."""
    height, width = canvas
    out = torch.full((image.shape[0], height, width), fill, dtype=image.dtype)
    h, w = min(height, image.shape[1]), min(width, image.shape[2])
    out[:, :h, :w] = image[:, :h, :w]
    return out


def _boxes_on_canvas(sample: Targets, canvas: tuple[int, int]) -> torch.Tensor:
    """The moved boxes clipped to the canvas as (n, 5) rows; boxes left under a pixel wide or
    high (cut off by the canvas) go."""
    assert sample.boxes is not None and sample.labels is not None
    boxes = sample.boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, canvas[1])
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, canvas[0])
    keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
    return torch.cat([boxes[keep], sample.labels[keep, None].to(boxes.dtype)], dim=1)


# --- reading ------------------------------------------------------------------------------------


def image_frame(path: str) -> pd.DataFrame:
    """The image files directly in folder ``path`` (or the one image file ``path``) as a frame
    with a ``path`` column, sorted by name."""
    import pandas as pd

    where = Path(path)
    if where.is_file():
        if where.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(
                f"{path}: not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})"
            )
        return pd.DataFrame({PATH: [str(where)]})
    if not where.is_dir():
        raise DataError(f"{path}: no such folder of images")
    names = image_files(where)
    if not names:
        raise DataError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return pd.DataFrame({PATH: [str(where / name) for name in names]})


def held_out_frames(
    frame: pd.DataFrame, val: np.ndarray, test: np.ndarray
) -> dict[str, pd.DataFrame]:
    """The validation and test images' paths: the rows a package is checked on. The training
    rows are left out (a scene package keeps no drift reference)."""
    return {
        name: frame.iloc[rows][[PATH]].reset_index(drop=True)
        for name, rows in (("val", val), ("test", test))
        if len(rows)
    }


def decode_images(paths: list[str], channels: int | None) -> list[np.ndarray]:
    """Each file as uint8 (C, h, w) at ``channels`` (as found when None), in threads."""
    require_vision()

    def one(path: str) -> np.ndarray:
        pixels = runtime_images.decode_bytes(runtime_images.read_file(path), path)
        return runtime_images.fit_image(pixels, channels, None)

    decoded: list[np.ndarray] = runtime_images.parallel_map(one, paths)
    return decoded


def file_digest(path: str) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(runtime_images.read_file(path)).hexdigest()


def fit_canvas(
    data: SceneDataConfig, sizes: Sequence[tuple[int, int]]
) -> tuple[tuple[int, int], bool]:
    """The canvas and whether images are scaled onto it: ``data.image_size`` square, or the
    largest height and width found (images keep their size)."""
    if data.image_size is not None:
        return (data.image_size, data.image_size), True
    return (max(h for h, _ in sizes), max(w for _, w in sizes)), False


def fit_normalization(
    data: SceneDataConfig, train_images: np.ndarray, channels: int
) -> tuple[list[float], list[float]]:
    """The configured mean/std, or the training images' own."""
    for key in ("mean", "std"):
        values = getattr(data, key)
        if values is not None and len(values) not in (1, channels):
            raise DataError(
                f"data.{key}: {len(values)} values for {channels}-channel images; give one per "
                "channel (or a single value for all)"
            )
    mean, std = channel_stats(torch.from_numpy(train_images))
    return (
        list(data.mean) if data.mean is not None else mean,
        list(data.std) if data.std is not None else std,
    )


def fit_preprocessor(
    cls: type[S],
    data: SceneDataConfig,
    task: Task,
    images: Sequence[np.ndarray],
    train_rows: np.ndarray,
    **extra: Any,
) -> tuple[S, dict[str, np.ndarray]]:
    """A data kind's preprocessor fitted on decoded images (channels, canvas, and normalisation
    from the ``train_rows``), and every image placed on its canvas."""
    channels = fitted_channels(data, images)
    # Grayscale images among colour ones become RGB.
    images = [runtime_images.fit_image(image, channels, None) for image in images]
    canvas, fixed = fit_canvas(data, [(image.shape[1], image.shape[2]) for image in images])
    preprocessor = cls(
        target=data.target,
        task=task,
        height=canvas[0],
        width=canvas[1],
        fixed=fixed,
        channels=channels,
        mean=[0.0],
        std=[1.0],
        augment=data.augment.model_dump(mode="json"),
        **extra,
    )
    placed = preprocessor.place(images)  # the placement does not read the normalisation
    mean, std = fit_normalization(data, placed["image"][train_rows], channels)
    preprocessor.mean = mean * (channels // len(mean))
    preprocessor.std = std * (channels // len(std))
    return preprocessor, placed


def fitted_channels(data: SceneDataConfig, images: Sequence[np.ndarray]) -> int:
    """``data.channels``, or 3 when any image has colour."""
    if data.channels is not None:
        return data.channels
    return 3 if any(image.shape[0] == 3 for image in images) else 1


def scene_config(config: Config, kind: type[SceneDataConfig]) -> Any:
    """``config.data`` checked to be the data kind's section."""
    if not isinstance(config.data, kind):  # mlsmith.families routes by data.type
        raise TypeError(f"{kind.__name__} expected, got a data section of type {config.data.type}")
    return config.data


def fingerprint(parts: Sequence[str]) -> str:
    """One short digest of each image's name, bytes and target, in order."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def log_prepared(
    kind: str, source: str, counts: dict[str, int], canvas: tuple[int, int], channels: int
) -> None:
    """One line saying what was read."""
    log.info(
        "%s: %d images (%d train, %d val, %d test) on a %dx%d canvas, %d channel%s",
        source,
        sum(counts.values()),
        counts["train"],
        counts["val"],
        counts["test"],
        canvas[0],
        canvas[1],
        channels,
        "s" if channels > 1 else "",
    )
