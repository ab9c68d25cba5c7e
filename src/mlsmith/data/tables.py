"""Reading tables: CSV, Parquet and the built-in datasets, whole or in chunks.

Every reader raises :class:`DataError` naming the file and what was wrong, never a bare pandas
traceback.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from mlsmith.config import BUILTIN_PREFIX
from mlsmith.errors import DataError, did_you_mean

if TYPE_CHECKING:
    import pandas as pd

SUFFIXES = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}


def _builtin_loaders() -> dict[str, Callable[[], pd.DataFrame]]:
    """Real datasets that ship inside scikit-learn, so examples and tests run offline."""
    from sklearn import datasets

    def frame(loader: Callable[..., object]) -> Callable[[], pd.DataFrame]:
        return lambda: loader(as_frame=True).frame  # type: ignore[attr-defined]

    return {
        "breast_cancer": frame(datasets.load_breast_cancer),
        "iris": frame(datasets.load_iris),
        "wine": frame(datasets.load_wine),
        "diabetes": frame(datasets.load_diabetes),
        "digits": frame(datasets.load_digits),
    }


def read_table(path: str) -> pd.DataFrame:
    """Read a whole CSV/Parquet file or built-in dataset (``sklearn:<name>``) into a DataFrame."""
    import pandas as pd

    if path.startswith(BUILTIN_PREFIX):
        name = path[len(BUILTIN_PREFIX) :]
        loaders = _builtin_loaders()
        if name not in loaders:
            raise DataError(
                f"unknown built-in dataset '{path}'{did_you_mean(name, loaders)}; "
                f"available: {', '.join(BUILTIN_PREFIX + n for n in loaders)}"
            )
        return loaders[name]()
    file = _existing_file(path)
    try:
        if _format(file) == "parquet":
            frame = pd.read_parquet(file)
        else:
            frame = pd.read_csv(file, sep=_separator(file))
    except (ValueError, OSError, pd.errors.ParserError, ImportError) as exc:
        raise DataError(f"{file}: cannot be read as {_format(file)}: {exc}") from None
    if frame.shape[1] == 0:
        raise DataError(f"{file}: the table has no columns")
    return frame


def iter_table(path: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Yield a file's rows in chunks of at most ``chunk_rows``, never holding the whole file."""
    import pandas as pd

    if path.startswith(BUILTIN_PREFIX):
        frame = read_table(path)
        for start in range(0, len(frame), chunk_rows):
            yield frame.iloc[start : start + chunk_rows]
        return
    file = _existing_file(path)
    try:
        if _format(file) == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(file).iter_batches(batch_size=chunk_rows):
                yield batch.to_pandas()
        else:
            yield from pd.read_csv(file, sep=_separator(file), chunksize=chunk_rows)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{file}: cannot be read as {_format(file)}: {exc}") from None


def fingerprint(frame: pd.DataFrame) -> str:
    """A content hash of a table: column names, dtypes and every value, row order included."""
    import pandas as pd

    digest = hashlib.sha256()
    digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def require_columns(frame: pd.DataFrame, columns: list[str], source: str, role: str) -> None:
    """Raise a DataError naming the first column of ``columns`` that ``frame`` lacks."""
    present = [str(c) for c in frame.columns]
    for column in columns:
        if column not in frame.columns:
            raise DataError(
                f"{source}: {role} column '{column}' not found{did_you_mean(column, present)}; "
                f"columns are: {', '.join(present[:30])}{' ...' if len(present) > 30 else ''}"
            )


def _existing_file(path: str) -> Path:
    file = Path(path)
    if not file.is_file():
        hint = " (it is a directory)" if file.is_dir() else ""
        raise DataError(f"data file not found: {file}{hint}")
    if file.suffix.lower() not in SUFFIXES:
        raise DataError(
            f"{file}: unsupported file type '{file.suffix}'; expected one of "
            f"{', '.join(sorted(SUFFIXES))}"
        )
    return file


def _separator(file: Path) -> str:
    return "\t" if file.suffix.lower() == ".tsv" else ","


def _format(file: Path) -> str:
    return SUFFIXES[file.suffix.lower()]
