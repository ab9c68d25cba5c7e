"""Where images come from: a class-per-subfolder directory, a CSV/Parquet of paths, a NumPy .npz.

Every source becomes one frame: a ``path`` column (the file, or ``<file.npz>[i]``), the pixels
themselves in an ``image`` column for .npz rows, and the label column when the source has one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlsmith.data.tables import SUFFIXES, iter_table, read_table
from mlsmith.errors import DataError, did_you_mean
from mlsmith.runtime.frames import require_columns
from mlsmith.runtime.images import ARRAY, PATH

if TYPE_CHECKING:
    import pandas as pd

# Frame columns: the image's file (or "<file.npz>[i]"), and for .npz rows the pixels themselves.
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


@dataclass(frozen=True)
class Sources:
    """How a data source names things: the label column/array, the CSV path column, the .npz
    image array. Turns a folder, a CSV/Parquet of paths, an .npz or one image file into a frame
    with a ``path`` column (and ``image`` arrays for .npz rows, and the label when present)."""

    target: str
    path_column: str
    image_key: str

    def read(self, path: str) -> pd.DataFrame:
        """The images at ``path`` as a frame: a folder (recursively), a table of paths, an .npz
        or one image file."""
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
        """The same frame in chunks of at most ``chunk_rows``; tables are read chunk by chunk."""
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
