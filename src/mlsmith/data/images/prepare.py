"""Preparing image data for a run: read the sources, split, decode (or index for streaming), and
fit the preprocessing on the training split.

``data.cache`` decides how the images are held: ``memory`` (and ``auto`` when they fit in
``data.cache_limit_mb``) decodes every image once, in threads, into one uint8 tensor
(N, C, H, W); ``stream`` only reads the headers (sizes, channels, file hashes) and leaves
decoding to the DataLoader workers of :class:`~mlsmith.data.images.batches.StreamBatches`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mlsmith.config import Config, ImageDataConfig
from mlsmith.data.base import PreparedData, Split, drop_missing_target, warn_missing_classes
from mlsmith.data.images.batches import load_images
from mlsmith.data.images.decode import (
    channel_stats,
    decode_rows,
    require_vision,
    scan_files,
    stack_images,
)
from mlsmith.data.images.preprocess import ImagePreprocessor, cache_mode
from mlsmith.data.images.sources import ARRAY, PATH, Sources
from mlsmith.data.splits import split_frames
from mlsmith.errors import ConfigError, DataError
from mlsmith.runtime.frames import require_columns
from mlsmith.tasks import fit_task, infer_task

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# A streamed training split's mean/std come from this many sampled images (all when cached).
STATS_SAMPLE = 2048


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
    parts = split_frames(
        main, val_file, test_file, data, classification=True, seed=config.seed, unit="images"
    )
    task = preprocessor.task if preprocessor else fit_task(kind, labelled, parts.train[data.target])
    warn_missing_classes(task, {"train": parts.train, "val": parts.val}, data.target, "images")

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

    def rows(positions: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[positions] for k, v in main_inputs.items()}

    train_inputs = rows(parts.indices.train)
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
    # Fixed files were decoded on their own, after the main table's images.
    val_inputs = others.pop(0) if val_file is not None else rows(parts.indices.val)
    test_inputs = others.pop(0) if test_file is not None else rows(parts.indices.test)
    fitted = preprocessor

    def split(inputs: dict[str, np.ndarray], frame: pd.DataFrame, name: str) -> Split:
        return Split(inputs, fitted.encode_target(frame, name))

    train, val, test = parts.train, parts.val, parts.test
    log.info(
        "%d images (%d train, %d val, %d test), %dx%d, %d channel%s, %s in %.1f s",
        n_total,
        len(train),
        len(val),
        len(test),
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
        train=split(train_inputs, train, "training split"),
        val=split(val_inputs, val, "validation split"),
        test=split(test_inputs, test, "test split") if len(test) else None,
        fingerprint="+".join(decoded.fingerprints),
        summary={
            "source": data.path,
            "rows": {"train": len(train), "val": len(val), "test": len(test)},
            "task": task.kind,
            "classes": len(task.classes),
            "image_size": [size[0], size[1]],
            "channels": channels,
            "cache": mode,
        },
        frames={"train": train, "val": val, "test": test},
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
    decoded = [decode_rows(frame, channels, size) for frame in frames]
    every = [image for images, _ in decoded for image in images]
    fitted_channels = channels or (3 if any(image.shape[0] == 3 for image in every) else 1)
    fitted_size = size or _common_size(
        [tuple(image.shape[-2:]) for image in every], [p for f in frames for p in f[PATH]]
    )
    inputs = [{"image": stack_images(images, fitted_channels).numpy()} for images, _ in decoded]
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
            digests, file_sizes, file_channels = scan_files(paths)
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
        images = load_images(source, picked.tolist(), channels, size)
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
    _, sizes, _ = scan_files([str(frame[PATH].iloc[0])])
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
