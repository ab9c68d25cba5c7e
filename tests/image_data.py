"""Tiny generated image datasets for the image tests: arrays, PNG folders, CSVs of paths, .npz.

Class k is a bright blob at a class-specific place on a dark, noisy background (tinted per class
in RGB), so a small network learns it in a few epochs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def make_images(
    n_per_class: int = 10,
    classes: int = 3,
    size: tuple[int, int] = (16, 16),
    channels: int = 1,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W) for one channel or (N, H, W, 3), and int labels (N,)."""
    rng = np.random.default_rng(seed)
    height, width = size
    labels = np.repeat(np.arange(classes), n_per_class)
    images = rng.integers(0, 60, size=(len(labels), height, width, 3)).astype(np.uint8)
    for i, label in enumerate(labels):
        angle = 2 * np.pi * label / classes
        y = int(height / 2 + height / 4 * np.sin(angle)) + int(rng.integers(-1, 2))
        x = int(width / 2 + width / 4 * np.cos(angle)) + int(rng.integers(-1, 2))
        tint = np.array([255, 200 + 25 * (label % 3), 255 - 60 * (label % 3)], dtype=np.uint8)
        images[i, max(0, y - 2) : y + 2, max(0, x - 2) : x + 2] = tint
    if channels == 1:
        return images[..., 0].copy(), labels
    return images, labels


def save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_folder(
    root: Path,
    images: np.ndarray,
    labels: np.ndarray,
    names: list[str] | None = None,
    suffix: str = ".png",
) -> Path:
    """One subfolder per class (named after ``names[label]``, default ``c<label>``)."""
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        name = names[label] if names else f"c{label}"
        save_png(image, root / name / f"{i:04d}{suffix}")
    return root


def write_csv(root: Path, images: np.ndarray, labels: np.ndarray, name: str = "data.csv") -> Path:
    """Images under root/files/, and a CSV (path relative to it, label) at root/name."""
    rows = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        relative = f"files/img{i:04d}.png"
        save_png(image, root / relative)
        rows.append({"path": relative, "label": f"c{label}"})
    csv = root / name
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def write_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, label=labels)
    return path


def image_config(data_path: Path | str, output_dir: Path, **data: object) -> dict[str, object]:
    """A fast image config: a tiny CNN, two epochs, no tracking; no report or package (seconds
    a run), which the tests of those turn on."""
    return {
        "experiment": "img",
        "seed": 0,
        "output_dir": str(output_dir),
        "data": {"type": "image", "path": str(data_path), **data},
        "model": {"type": "cnn", "channels": [8, 16], "depth": 1, "dropout": 0.1},
        "train": {"epochs": 2, "batch_size": 16, "optimizer": {"lr": 0.01}},
        "track": {"enabled": False},
        "eval": {"bootstrap": 100, "baseline": False, "report": False},
        "export": {"package": False},
    }
