"""Image classification data: a class-per-subfolder directory, a CSV of paths, or a NumPy .npz.

Every image goes through one pipeline, so training, evaluation and prediction see the same
pixels: decode with Pillow (EXIF orientation applied) to grayscale or RGB -> uint8 tensor
(C, H, W) -> the fitted channel count -> resized to cover the fitted size, then center-cropped to
it. That uint8 image is what is stored; augmentation (training only), float conversion and
normalisation happen per batch.

Two ways to batch, chosen by ``data.cache``:

* ``memory`` (and ``auto`` when it fits in ``data.cache_limit_mb``): every image is decoded once,
  in threads, into a uint8 tensor (N, C, H, W) that :class:`ImageBatches` batches by slicing.
* ``stream``: :class:`StreamBatches` decodes per sample in DataLoader workers (pinned memory,
  persistent workers) for data that does not fit.

Randomness: the epoch's order and one seed per training sample come from the batches' own
generator, which the Trainer checkpoints and rewinds; each sample's augmentation runs under its
seed. So a resumed run (even mid-epoch) sees exactly the batches an uninterrupted run would, and
both batch kinds produce the same batches for the same seed.

The fitted state (classes, size, channels, mean/std, augmentation) is plain JSON.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mlsmith.config import AugmentConfig, Config, ImageDataConfig
from mlsmith.data.base import PREPROCESSING_FILE, PreparedData, Split
from mlsmith.data.batches import Batch, TensorBatches
from mlsmith.data.splits import split_rows
from mlsmith.data.tables import SUFFIXES, iter_table, read_table, require_columns
from mlsmith.data.tabular import drop_missing_target
from mlsmith.errors import ConfigError, DataError, MissingExtraError, did_you_mean
from mlsmith.files import read_json, write_json
from mlsmith.tasks import ClassificationTask, Task, fit_task, infer_task, task_from_dict

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# Frame columns: the image's file (or "<file.npz>[i]"), and for .npz rows the pixels themselves.
PATH = "path"
ARRAY = "image"
IMAGE_SUFFIXES = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".jfif",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
    }
)
# Pillow modes that are one channel of intensity.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"})
# A streamed training split's mean/std come from this many sampled images (all when cached).
STATS_SAMPLE = 2048
# Seeds for per-sample augmentation are drawn in [0, 2**62).
SEED_BOUND = 2**62


def require_vision() -> None:
    """Raise a MissingExtraError unless torchvision and Pillow are installed."""
    try:
        import PIL.Image  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        raise MissingExtraError("torchvision", "vision", "Image data") from None


# --- reading sources --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    """How a data source names things: the label column/array, the CSV path column, the .npz
    image array. Turns a folder, a CSV/Parquet of paths, an .npz or one image file into a frame
    with a ``path`` column (and ``image`` arrays for .npz rows, and the label when present)."""

    target: str
    path_column: str
    image_key: str

    def read(self, path: str) -> pd.DataFrame:
        import pandas as pd

        file = Path(path)
        if file.is_dir():
            return self._folder(file)
        if not file.is_file():
            raise DataError(f"image data not found: {file}")
        suffix = file.suffix.lower()
        if suffix == ".npz":
            return self._npz(file)
        if suffix in SUFFIXES:
            return self._table(read_table(path), file)
        if suffix in IMAGE_SUFFIXES:
            return pd.DataFrame({PATH: [str(file)]})
        raise DataError(
            f"{file}: unsupported input '{suffix}'; expected a folder of images, a CSV or Parquet "
            "file of image paths, an .npz file or an image file"
        )

    def iter_read(self, path: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
        file = Path(path)
        if file.is_file() and file.suffix.lower() in SUFFIXES:
            for chunk in iter_table(path, chunk_rows):
                yield self._table(chunk, file)
            return
        frame = self.read(path)
        for start in range(0, len(frame), chunk_rows):
            yield frame.iloc[start : start + chunk_rows]

    def _folder(self, root: Path) -> pd.DataFrame:
        import pandas as pd

        files = image_files(root)
        if not files:
            raise DataError(
                f"{root}: no image files found in the folder or its subfolders (looked for "
                f"{', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        frame = pd.DataFrame({PATH: [str(root / f) for f in files]})
        loose = [f for f in files if len(Path(f).parts) == 1]
        if loose:
            # Images outside class subfolders: a folder to predict, not a labelled one.
            frame.attrs["loose"] = loose[0]
        else:
            frame[self.target] = [Path(f).parts[0] for f in files]
        return frame

    def _table(self, table: pd.DataFrame, file: Path) -> pd.DataFrame:
        require_columns(table, [self.path_column], str(file), "image path")
        raw = table[self.path_column]
        if raw.isna().any():
            row = int(np.flatnonzero(raw.isna().to_numpy())[0])
            raise DataError(f"{file}: column '{self.path_column}' is empty in row {row}")
        base = file.parent
        frame = table.copy()
        frame[PATH] = [
            os.path.normpath(p if os.path.isabs(p) else os.path.join(base, p))
            for p in raw.astype(str).tolist()
        ]
        return frame

    def _npz(self, file: Path) -> pd.DataFrame:
        import zipfile

        import pandas as pd

        try:
            archive = np.load(file, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise DataError(f"{file}: cannot be read as a NumPy .npz archive: {exc}") from None
        with archive:
            names = list(archive.files)
            if self.image_key not in names:
                raise DataError(
                    f"{file}: no array '{self.image_key}' (data.image_key)"
                    f"{did_you_mean(self.image_key, names)}; arrays: {', '.join(names)}"
                )
            try:
                images = as_nchw(archive[self.image_key], f"{file}: array '{self.image_key}'")
                labels = archive[self.target] if self.target in names else None
            except ValueError as exc:  # e.g. object arrays, which need pickles
                raise DataError(f"{file}: {exc}") from None
        frame = pd.DataFrame({PATH: [f"{file}[{i}]" for i in range(len(images))]})
        column = np.empty(len(images), dtype=object)
        for i, image in enumerate(images):
            column[i] = image
        frame[ARRAY] = column
        if labels is not None:
            if labels.ndim != 1 or len(labels) != len(images):
                raise DataError(
                    f"{file}: array '{self.target}' has shape {labels.shape}; expected one "
                    f"label per image, ({len(images)},)"
                )
            frame[self.target] = labels
        return frame


def image_files(root: Path) -> list[str]:
    """Image files under ``root`` (recursively, hidden ones skipped), relative and sorted."""
    found = []
    for directory, subdirs, names in os.walk(root, followlinks=True):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        rel = os.path.relpath(directory, root)
        for name in names:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                found.append(name if rel == "." else os.path.join(rel, name))
    return sorted(found, key=lambda f: Path(f).parts)


def as_nchw(array: np.ndarray, what: str) -> np.ndarray:
    """Images of any usual layout and dtype as uint8 (N, C, H, W) with C in {1, 3}."""
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4:
        if array.shape[-1] in (1, 3, 4) and array.shape[1] not in (1, 3, 4):
            array = array.transpose(0, 3, 1, 2)
        elif array.shape[1] not in (1, 3, 4):
            raise DataError(f"{what} has shape {array.shape}; expected 1, 3 or 4 channels")
    else:
        raise DataError(
            f"{what} has shape {array.shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W)"
        )
    if array.shape[1] == 4:
        array = array[:, :3]  # drop alpha
    if array.dtype == np.uint8:
        pass
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if array.size and not (np.nanmin(array) >= 0.0 and np.nanmax(array) <= 1.0):
            raise DataError(f"{what} holds floats outside [0, 1]; store uint8 pixels instead")
        array = np.round(np.nan_to_num(array) * 255.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        if array.size and not (array.min() >= 0 and array.max() <= 255):
            raise DataError(f"{what} holds integers outside [0, 255]; store uint8 pixels instead")
        array = array.astype(np.uint8)
    else:
        raise DataError(f"{what} has dtype {array.dtype}; expected uint8 pixels")
    return np.ascontiguousarray(array)


# --- decoding ---------------------------------------------------------------------------------


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
    return fit_image(decode_bytes(read_file(path), path, size), channels, size)


def parallel_map(function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``[function(x) for x in items]`` in threads (Pillow and torch release the GIL); the first
    error cancels what has not started yet."""
    pool = ThreadPoolExecutor(max(2, min(16, os.cpu_count() or 1)))
    try:
        return list(pool.map(function, items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _decode_rows(
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


def _stack(images: Sequence[torch.Tensor], channels: int) -> torch.Tensor:
    """Same-sized uint8 images to (N, C, H, W); grayscale ones repeated to 3 channels if asked."""
    if not images:
        return torch.empty((0, channels, 1, 1), dtype=torch.uint8)
    height, width = images[0].shape[-2:]
    out = torch.empty((len(images), channels, height, width), dtype=torch.uint8)
    for i, image in enumerate(images):
        out[i].copy_(fit_image(image, channels, None))
    return out


def _scan_files(paths: list[str]) -> tuple[list[str], list[tuple[int, int]], list[int]]:
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


# --- batches ----------------------------------------------------------------------------------


class Normalize:
    """uint8 images to float32 ``(x / 255 - mean) / std``, as one multiply-add per batch."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        std_t = torch.tensor(std, dtype=torch.float64)
        self.scale = (1.0 / (255.0 * std_t)).float().view(1, -1, 1, 1)
        self.shift = (-torch.tensor(mean, dtype=torch.float64) / std_t).float().view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.scale.device != images.device:
            self.scale, self.shift = self.scale.to(images.device), self.shift.to(images.device)
        return images.to(torch.float32).mul_(self.scale).add_(self.shift)


Augment = Callable[[torch.Tensor], torch.Tensor]


def build_augment(cfg: AugmentConfig, size: tuple[int, int], channels: int) -> Augment | None:
    """The training augmentation as a torchvision.transforms.v2 pipeline on uint8 (C, H, W)."""
    if not cfg.enabled:
        return None
    from torchvision.transforms import v2

    ops: list[Any] = []
    if cfg.crop_scale:
        ops.append(v2.RandomResizedCrop(list(size), scale=cfg.crop_scale, antialias=True))
    if cfg.hflip:
        ops.append(v2.RandomHorizontalFlip())
    if cfg.rotation or cfg.translate:
        shift = (cfg.translate, cfg.translate) if cfg.translate else None
        ops.append(v2.RandomAffine(degrees=cfg.rotation, translate=shift))
    if cfg.color_jitter:
        jitter = cfg.color_jitter
        saturation = jitter if channels == 3 else None
        ops.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=saturation))
    if cfg.randaugment:
        ops.append(v2.RandAugment(num_ops=2, magnitude=9))
    compose: Augment = v2.Compose(ops)
    return compose


def draw_seeds(generator: torch.Generator, n: int) -> torch.Tensor:
    """One augmentation seed per sample, from the batches' generator."""
    return torch.randint(0, SEED_BOUND, (n,), generator=generator)


def augment_samples(images: torch.Tensor, seeds: torch.Tensor, augment: Augment) -> torch.Tensor:
    """Augment each image of (B, C, H, W) under its own seed; the global RNG is left as it was.

    Seeding per sample makes a sample's augmentation depend on its seed only: the same in
    memory or in a DataLoader worker, whatever the batch it lands in.
    """
    out = torch.empty_like(images)
    threads = torch.get_num_threads()
    # One image is far too small to split across threads: on 2 CPUs this alone is 3-4x faster
    # (and a single thread makes every reduction, e.g. ColorJitter's mean, the same everywhere).
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            for i, seed in enumerate(seeds.tolist()):
                torch.default_generator.manual_seed(seed)
                out[i] = augment(images[i])
    finally:
        torch.set_num_threads(threads)
    return out


class ImageBatches(TensorBatches):
    """Batches sliced from a uint8 tensor (N, C, H, W); augmentation and normalisation in
    :meth:`collate`, one batch at a time."""

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        target: np.ndarray | None,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        normalize: Normalize,
        augment: Augment | None = None,
    ) -> None:
        super().__init__(
            inputs, target, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.normalize = normalize
        self.augment = augment
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> ImageBatches:
        """Without augmentation the cache moves to ``device`` once. With it, the cache stays on
        the CPU, where per-sample transforms are cheap, and each finished batch moves."""
        self.device = torch.device(device)
        if self.augment is None or self.device.type == "cpu":
            super().to(self.device)
        return self

    def collate(self, inputs: dict[str, torch.Tensor], target: torch.Tensor) -> Batch:
        images = inputs["image"]
        if self.augment is not None:
            images = augment_samples(images, draw_seeds(self.generator, len(images)), self.augment)
        images = images.to(self.device, non_blocking=True)
        target = target.to(self.device, non_blocking=True)
        return {"image": self.normalize(images)}, target


class _Failed:
    """A sample a worker could not load; the main process raises its message as a DataError."""

    def __init__(self, message: str) -> None:
        self.message = message


class ImageDataset:
    """Map-style dataset for a DataLoader: key (index, seed) -> (uint8 (C, H, W), index)."""

    def __init__(
        self,
        source: np.ndarray,
        channels: int,
        size: tuple[int, int],
        augment: Augment | None,
    ) -> None:
        # Paths (object array of str) or stored pixels (uint8 (N, c, h, w)).
        self.source = source
        self.channels = channels
        self.size = size
        self.augment = augment

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor | _Failed, int]:
        index, seed = key
        try:
            if self.source.dtype == object:
                image = decode_file(str(self.source[index]), self.channels, self.size)
            else:
                stored = torch.from_numpy(self.source[index])
                image = fit_image(stored, self.channels, self.size)
        except DataError as error:
            return _Failed(str(error)), index
        if self.augment is not None:
            image = augment_samples(image[None], torch.tensor([seed]), self.augment)[0]
        return image, index


def _collate_samples(
    items: list[tuple[torch.Tensor | _Failed, int]],
) -> tuple[torch.Tensor | _Failed, torch.Tensor]:
    for image, _ in items:
        if isinstance(image, _Failed):
            return image, torch.empty(0, dtype=torch.int64)
    images = [image for image, _ in items if isinstance(image, torch.Tensor)]
    return torch.stack(images), torch.tensor([index for _, index in items], dtype=torch.int64)


class _Plan:
    """The DataLoader's batch sampler: this epoch's batches of (index, seed), set per epoch."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamBatches(TensorBatches):
    """Batches decoded per sample by DataLoader workers, for images that are not cached.

    Used by the Trainer exactly like :class:`TensorBatches`. The order and the per-sample seeds
    are drawn from ``generator`` in the main process in the same sequence ImageBatches draws
    them, so both produce the same batches, and resuming mid-epoch is exact here too. Workers
    only decode and augment; the main process normalises on the training device.
    """

    def __init__(
        self,
        source: np.ndarray,
        target: np.ndarray | None,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        channels: int,
        size: tuple[int, int],
        normalize: Normalize,
        augment: Augment | None = None,
        num_workers: int = 2,
    ) -> None:
        n = len(source)
        labels = np.zeros(n, dtype=np.float32) if target is None else target
        self.inputs = {}
        self.target = torch.from_numpy(np.ascontiguousarray(labels))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.dataset = ImageDataset(source, channels, size, augment)
        self.normalize = normalize
        self.augment = augment
        self.num_workers = num_workers
        self.device = torch.device("cpu")
        self._plan = _Plan()
        self._loader: Any = None

    def __len__(self) -> int:
        return len(self.target)

    def to(self, device: torch.device) -> StreamBatches:
        self.device = torch.device(device)
        return self

    def loader(self) -> Any:
        if self._loader is None:
            from torch.utils.data import DataLoader

            workers = self.num_workers
            self._loader = DataLoader(
                self.dataset,  # type: ignore[arg-type]
                batch_sampler=self._plan,
                num_workers=workers,
                collate_fn=_collate_samples,
                pin_memory=torch.cuda.is_available(),
                persistent_workers=workers > 0,
                prefetch_factor=4 if workers > 0 else None,
                # The loader draws its workers' base seed from this generator, not the global RNG.
                generator=torch.Generator().manual_seed(0),
            )
        return self._loader

    def steps(self, accumulate: int = 1) -> Iterator[list[Batch]]:
        n = len(self.target)
        per_step = self.batch_size * accumulate
        usable = n - n % per_step if self.drop_last else n
        order = self.permutation(n) if self.shuffle else torch.arange(n)
        plan: list[list[tuple[int, int]]] = []
        for start in range(0, usable, per_step):
            for i in range(start, min(start + per_step, usable), self.batch_size):
                indices = order[i : min(i + self.batch_size, start + per_step, usable)].tolist()
                if self.augment is not None:
                    seeds = draw_seeds(self.generator, len(indices)).tolist()
                else:
                    seeds = [0] * len(indices)
                plan.append(list(zip(indices, seeds, strict=True)))
        self._plan.batches = plan
        if not plan:
            return
        batches = iter(self.loader())
        for start in range(0, usable, per_step):
            count = -(-(min(start + per_step, usable) - start) // self.batch_size)
            yield [self._receive(next(batches)) for _ in range(count)]

    def _receive(self, batch: tuple[torch.Tensor | _Failed, torch.Tensor]) -> Batch:
        images, indices = batch
        if isinstance(images, _Failed):
            raise DataError(images.message)
        images = images.to(self.device, non_blocking=True)
        target = self.target[indices].to(self.device, non_blocking=True)
        return {"image": self.normalize(images)}, target


# --- the fitted preprocessing -----------------------------------------------------------------


class ImagePreprocessor:
    """Classes, size, channels and normalisation fitted on the training split; the
    augmentation and caching settings it batches with."""

    kind = "image"
    output_columns: tuple[str, ...] = (PATH,)

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
        self.target = target
        self.task = task
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
        return (self.height, self.width)

    def read(self, path: str) -> pd.DataFrame:
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
        images, _ = _decode_rows(frame, self.channels, self.size)
        return {"image": _stack(images, self.channels).numpy()}

    def to_split(self, frame: pd.DataFrame, source: str) -> Split:
        if self.target not in frame.columns:
            if "loose" in frame.attrs:
                raise DataError(
                    f"{source}: no labels: '{frame.attrs['loose']}' is not in a class subfolder; "
                    "labelled image folders hold one subfolder per class"
                )
            require_columns(frame, [self.target], source, "label")
        frame = drop_missing_target(frame, self.target, source)
        return Split(
            self.transform(frame, source), encode_labels(self.task, frame, self.target, source)
        )

    def batches(
        self,
        split_inputs: dict[str, np.ndarray],
        target: np.ndarray | None,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        train: bool = False,
    ) -> TensorBatches:
        augment = build_augment(self.augment, self.size, self.channels) if train else None
        normalize = Normalize(self.mean, self.std)
        options: dict[str, Any] = {"shuffle": shuffle, "seed": seed, "drop_last": drop_last}
        if "image" in split_inputs:
            return ImageBatches(
                split_inputs, target, batch_size, normalize=normalize, augment=augment, **options
            )
        source = split_inputs["path"] if "path" in split_inputs else split_inputs["array"]
        return StreamBatches(
            source,
            target,
            batch_size,
            channels=self.channels,
            size=self.size,
            normalize=normalize,
            augment=augment,
            num_workers=self.num_workers,
            **options,
        )

    def model_inputs(self) -> dict[str, Any]:
        return {"channels": self.channels, "height": self.height, "width": self.width}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "task": self.task.to_dict(),
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

    def save(self, directory: Path) -> None:
        write_json(Path(directory) / PREPROCESSING_FILE, self.to_dict())

    @classmethod
    def load(cls, directory: Path) -> ImagePreprocessor:
        state = read_json(Path(directory) / PREPROCESSING_FILE)
        state.pop("kind")
        state["task"] = task_from_dict(state["task"])
        return cls(**state)


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


def encode_labels(task: Task, frame: pd.DataFrame, target: str, source: str) -> np.ndarray:
    try:
        return task.encode(frame[target])
    except DataError as error:
        raise DataError(f"{source}: {error}") from None


# --- prepare ----------------------------------------------------------------------------------


def prepare(config: Config, *, preprocessor: ImagePreprocessor | None = None) -> PreparedData:
    """Read, split and decode the configured images; fit the preprocessing on the training split.

    A given ``preprocessor`` (a run being resumed or evaluated) is used instead of fitting one;
    the split is recomputed from the seed and lands on the same rows.
    """
    import pandas as pd

    require_vision()
    data = _image_config(config)
    sources = Sources(data.target, data.path_column, data.image_key)
    main = _read_labelled(sources, data.path, data.target)
    val_file = _read_labelled(sources, data.val_path, data.target) if data.val_path else None
    test_file = _read_labelled(sources, data.test_path, data.target) if data.test_path else None
    frames = [f for f in (main, val_file, test_file) if f is not None]
    labelled = pd.concat([f[data.target] for f in frames], ignore_index=True)
    kind = _task_kind(labelled, data)
    indices = split_rows(
        main,
        data.split,
        val=0.0 if val_file is not None else data.split.val,
        test=0.0 if test_file is not None else data.split.test,
        classification=True,
        target=data.target,
        seed=config.seed,
        source=data.path,
    )
    if len(indices.train) == 0 or (val_file is None and len(indices.val) == 0):
        raise DataError(
            f"{data.path}: {len(main)} images leave {len(indices.train)} for training and "
            f"{len(indices.val)} for validation; both need at least one (add images or change "
            "data.split)"
        )
    task = (
        preprocessor.task
        if preprocessor
        else fit_task(kind, labelled, main[data.target].iloc[indices.train])
    )
    _warn_missing_classes(task, main, indices, val_file, data.target)

    started = time.perf_counter()
    if preprocessor is not None:
        channels: int | None = preprocessor.channels
        size: tuple[int, int] | None = preprocessor.size
    else:
        channels = data.channels
        size = (data.image_size, data.image_size) if data.image_size else None
    n_total = sum(len(f) for f in frames)
    first_size = size or _first_size(main)
    mode = cache_mode(data.cache, data.cache_limit_mb, n_total, channels or 3, first_size)
    if mode == "memory":
        decoded = _decoded_in_memory(frames, channels, size, data)
    else:
        decoded = _scanned_for_streaming(frames, channels, size, data)
    channels, size = decoded.channels, decoded.size
    main_inputs, *others = decoded.inputs

    def rows(inputs: dict[str, np.ndarray], positions: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[positions] for k, v in inputs.items()}

    train_inputs = rows(main_inputs, indices.train)
    if preprocessor is None:
        mean, std = _normalization(data, train_inputs, channels, size, config.seed)
        preprocessor = ImagePreprocessor(
            target=data.target,
            task=task,
            height=size[0],
            width=size[1],
            channels=channels,
            mean=mean,
            std=std,
            augment=data.augment.model_dump(mode="json"),
            path_column=data.path_column,
            image_key=data.image_key,
            cache=data.cache,
            cache_limit_mb=data.cache_limit_mb,
            num_workers=data.num_workers,
        )
    val_inputs = others.pop(0) if val_file is not None else rows(main_inputs, indices.val)
    test_inputs = others.pop(0) if test_file is not None else rows(main_inputs, indices.test)
    val_frame = val_file if val_file is not None else main.iloc[indices.val]
    test_frame = test_file if test_file is not None else main.iloc[indices.test]

    def split(inputs: dict[str, np.ndarray], frame: pd.DataFrame, name: str) -> Split:
        return Split(inputs, encode_labels(task, frame, data.target, name))

    log.info(
        "%d images (%d train, %d val, %d test), %dx%d, %d channel%s, %s in %.1f s",
        n_total,
        len(indices.train),
        len(val_frame),
        len(test_frame),
        size[0],
        size[1],
        channels,
        "s" if channels > 1 else "",
        "decoded into memory" if mode == "memory" else "indexed for streaming",
        time.perf_counter() - started,
    )
    return PreparedData(
        task=task,
        preprocessor=preprocessor,
        train=split(train_inputs, main.iloc[indices.train], "training split"),
        val=split(val_inputs, val_frame, "validation split"),
        test=split(test_inputs, test_frame, "test split") if len(test_frame) else None,
        fingerprint="+".join(decoded.fingerprints),
        summary={
            "source": data.path,
            "rows": {"train": len(indices.train), "val": len(val_frame), "test": len(test_frame)},
            "task": task.kind,
            "classes": len(task.classes),
            "image_size": [size[0], size[1]],
            "channels": channels,
            "cache": mode,
        },
        frames={"train": main.iloc[indices.train], "val": val_frame, "test": test_frame},
    )


@dataclass
class _Decoded:
    inputs: list[dict[str, np.ndarray]]  # one per source frame
    fingerprints: list[str]
    channels: int
    size: tuple[int, int]


def _decoded_in_memory(
    frames: list[pd.DataFrame],
    channels: int | None,
    size: tuple[int, int] | None,
    data: ImageDataConfig,
) -> _Decoded:
    decoded = [_decode_rows(frame, channels, size) for frame in frames]
    every = [image for images, _ in decoded for image in images]
    fitted_channels = channels or (3 if any(image.shape[0] == 3 for image in every) else 1)
    fitted_size = size or _common_size(
        [tuple(image.shape[-2:]) for image in every], [p for f in frames for p in f[PATH]]
    )
    inputs = [{"image": _stack(images, fitted_channels).numpy()} for images, _ in decoded]
    prints = [
        _fingerprint(frame, digests, path, data.target)
        for frame, (_, digests), path in zip(frames, decoded, _paths(data), strict=True)
    ]
    return _Decoded(inputs, prints, fitted_channels, fitted_size)


def _scanned_for_streaming(
    frames: list[pd.DataFrame],
    channels: int | None,
    size: tuple[int, int] | None,
    data: ImageDataConfig,
) -> _Decoded:
    inputs, prints, sizes, natives = [], [], [], []
    for frame, path in zip(frames, _paths(data), strict=True):
        if ARRAY in frame.columns:
            stored = np.stack(frame[ARRAY].to_list())
            inputs.append({"array": stored})
            sizes += [tuple(stored.shape[-2:])] * len(stored)
            natives.append(stored.shape[1])
            prints.append(_fingerprint(frame, None, path, data.target))
        else:
            paths = frame[PATH].astype(str).tolist()
            digests, file_sizes, file_channels = _scan_files(paths)
            inputs.append({"path": np.asarray(paths, dtype=object)})
            sizes += file_sizes
            natives += file_channels
            prints.append(_fingerprint(frame, digests, path, data.target))
    fitted_channels = channels or (3 if 3 in natives else 1)
    fitted_size = size or _common_size(sizes, [p for f in frames for p in f[PATH]])
    return _Decoded(inputs, prints, fitted_channels, fitted_size)


def _normalization(
    data: ImageDataConfig,
    train: dict[str, np.ndarray],
    channels: int,
    size: tuple[int, int],
    seed: int,
) -> tuple[list[float], list[float]]:
    """The configured mean/std, or the training split's (a sample of it when streaming)."""
    for key in ("mean", "std"):
        values = getattr(data, key)
        if values is not None and len(values) not in (1, channels):
            raise ConfigError(
                f"data.{key}: {len(values)} values for {channels}-channel images; give one per "
                "channel (or a single value for all)"
            )
    if data.mean is not None and data.std is not None:
        return list(data.mean), list(data.std)
    if "image" in train:
        images = torch.from_numpy(train["image"])
    else:
        source = train["path"] if "path" in train else train["array"]
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.permutation(len(source))[:STATS_SAMPLE])
        dataset = ImageDataset(source, channels, size, augment=None)
        loaded = parallel_map(lambda i: dataset[(int(i), 0)][0], picked.tolist())
        failed = next((item for item in loaded if isinstance(item, _Failed)), None)
        if failed is not None:
            raise DataError(failed.message)
        images = torch.stack([item for item in loaded if isinstance(item, torch.Tensor)])
    mean, std = channel_stats(images)
    return list(data.mean) if data.mean is not None else mean, list(
        data.std
    ) if data.std is not None else std


def _read_labelled(sources: Sources, path: str, target: str) -> pd.DataFrame:
    frame = sources.read(path)
    if target not in frame.columns:
        if "loose" in frame.attrs:
            raise DataError(
                f"{path}: '{frame.attrs['loose']}' is not in a class subfolder; training images "
                "need one subfolder per class (e.g. cats/1.png, dogs/2.png)"
            )
        if ARRAY in frame.columns:
            raise DataError(f"{path}: no label array '{target}' (data.target)")
        require_columns(frame, [target], path, "label")
    frame = drop_missing_target(frame, target, path)
    if len(frame) == 0:
        raise DataError(f"{path}: no labelled images")
    return frame.reset_index(drop=True)


def _task_kind(labelled: pd.Series, data: ImageDataConfig) -> str:
    # Images are always classes: many integer labels (e.g. 100) must not read as regression.
    distinct = len({str(v) for v in labelled.unique()})
    requested = data.task if data.task != "auto" else ("binary" if distinct == 2 else "multiclass")
    return infer_task(labelled, requested, data.path)


def _first_size(frame: pd.DataFrame) -> tuple[int, int]:
    if ARRAY in frame.columns:
        first = frame[ARRAY].iloc[0]
        return (int(first.shape[-2]), int(first.shape[-1]))
    _, sizes, _ = _scan_files([str(frame[PATH].iloc[0])])
    return sizes[0]


def _common_size(sizes: Sequence[tuple[int, ...]], paths: Sequence[str]) -> tuple[int, int]:
    distinct = dict.fromkeys(sizes)
    if len(distinct) > 1:
        first, other = list(distinct)[:2]
        a = paths[sizes.index(first)]
        b = paths[sizes.index(other)]
        raise DataError(
            f"images differ in size: {a} is {first[0]}x{first[1]}, {b} is {other[0]}x{other[1]} "
            "(height x width); set data.image_size to resize them all to one square size"
        )
    height, width = sizes[0]
    return (int(height), int(width))


def _fingerprint(frame: pd.DataFrame, digests: list[str] | None, path: str, target: str) -> str:
    """sha256 of the pixels and labels (.npz) or of every file's bytes, name and label."""
    digest = hashlib.sha256()
    labels = [str(v) for v in frame[target].tolist()]
    if digests is None:
        stacked = np.ascontiguousarray(np.stack(frame[ARRAY].to_list()))
        digest.update(f"{stacked.shape} {stacked.dtype}\n".encode())
        digest.update(stacked.tobytes())
        digest.update("\0".join(labels).encode())
    else:
        base = path if os.path.isdir(path) else os.path.dirname(path)
        for name, file_digest, label in zip(frame[PATH].tolist(), digests, labels, strict=True):
            relative = Path(os.path.relpath(name, base)).as_posix()
            digest.update(f"{relative}\0{label}\0{file_digest}\n".encode())
    return digest.hexdigest()[:16]


def _paths(data: ImageDataConfig) -> list[str]:
    return [p for p in (data.path, data.val_path, data.test_path) if p]


def _image_config(config: Config) -> ImageDataConfig:
    if not isinstance(config.data, ImageDataConfig):  # mlsmith.families routes by data.type
        raise TypeError(f"image data got a data section of type '{config.data.type}'")
    return config.data


def _warn_missing_classes(
    task: Task,
    main: pd.DataFrame,
    indices: Any,
    val_file: pd.DataFrame | None,
    target: str,
) -> None:
    if not isinstance(task, ClassificationTask):
        return
    val = val_file if val_file is not None else main.iloc[indices.val]
    for name, frame in (("train", main.iloc[indices.train]), ("val", val)):
        absent = task.absent_classes(frame[target])
        if absent:
            log.warning("%s split has no images of class(es) %s", name, absent)
