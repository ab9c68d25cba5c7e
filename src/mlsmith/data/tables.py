"""Reading tables: CSV, Parquet and the built-in datasets, whole, in chunks, or as an index of
chunks that can be read in any order (``data.stream``).

Every reader raises :class:`DataError` naming the file and what was wrong, never a bare pandas
traceback. A CSV is read with ``data.sep`` when set; otherwise with ',' (a tab for .tsv), unless
its header holds no comma but ';', tabs or '|', which is then the separator. Column names must be
unique: pandas would silently rename a second 'x' to 'x.1'.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from mlsmith.config import BUILTIN_PREFIX
from mlsmith.errors import DataError, did_you_mean
from mlsmith.runtime.frames import SNIFFED_SEPARATORS, likely_separator, mark_missing

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

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


def read_table(path: str, *, sep: str | None = None, na_values: Sequence[str] = ()) -> pd.DataFrame:
    """Read a whole CSV/Parquet file or built-in dataset (``sklearn:<name>``) into a DataFrame.

    ``sep``: the CSV separator, None to choose it from the header. ``na_values``: strings read as
    missing, besides pandas' defaults.
    """
    import pandas as pd

    if path.startswith(BUILTIN_PREFIX):
        name = path[len(BUILTIN_PREFIX) :]
        loaders = _builtin_loaders()
        if name not in loaders:
            raise DataError(
                f"unknown built-in dataset '{path}'{did_you_mean(name, loaders)}; "
                f"available: {', '.join(BUILTIN_PREFIX + n for n in loaders)}"
            )
        return mark_missing(loaders[name](), na_values)
    file = _existing_file(path)
    try:
        if _format(file) == "parquet":
            _parquet_columns(file)
            frame = mark_missing(pd.read_parquet(file), na_values)
        else:
            frame = pd.read_csv(file, sep=csv_separator(file, sep), na_values=list(na_values))
    except (ValueError, OSError, pd.errors.ParserError, ImportError) as exc:
        raise DataError(f"{file}: cannot be read as {_format(file)}: {exc}") from None
    if frame.shape[1] == 0:
        raise DataError(f"{file}: the table has no columns")
    return frame


def iter_table(
    path: str, chunk_rows: int, *, sep: str | None = None, na_values: Sequence[str] = ()
) -> Iterator[pd.DataFrame]:
    """Yield a file's rows in chunks of at most ``chunk_rows``, never holding the whole file.

    ``sep`` and ``na_values`` as for :func:`read_table`.
    """
    import pandas as pd

    if path.startswith(BUILTIN_PREFIX):
        frame = read_table(path, na_values=na_values)
        for start in range(0, len(frame), chunk_rows):
            yield frame.iloc[start : start + chunk_rows]
        return
    file = _existing_file(path)
    try:
        if _format(file) == "parquet":
            import pyarrow.parquet as pq

            _parquet_columns(file)
            for batch in pq.ParquetFile(file).iter_batches(batch_size=chunk_rows):
                yield mark_missing(batch.to_pandas(), na_values)
        else:
            yield from pd.read_csv(
                file,
                sep=csv_separator(file, sep),
                na_values=list(na_values),
                chunksize=chunk_rows,
            )
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{file}: cannot be read as {_format(file)}: {exc}") from None


@dataclass(frozen=True)
class TableChunks:
    """A CSV or Parquet file as chunks that any process can read in any order.

    A Parquet file's chunks are its row groups, read ``chunk_rows`` rows at a time. A CSV's
    are byte ranges of ``chunk_rows`` records each, read with the file's header so each parses
    on its own. Plain values only: DataLoader workers receive it pickled.
    """

    path: str
    format: str
    chunk_rows: int
    # CSV: [start, stop) byte offsets of each chunk; Parquet: (row group, row group + 1).
    ranges: tuple[tuple[int, int], ...]
    sep: str = ","
    na_values: tuple[str, ...] = ()
    header: bytes = b""

    def __len__(self) -> int:
        return len(self.ranges)

    def read(self, chunk: int) -> Iterator[pd.DataFrame]:
        """Chunk ``chunk``'s rows, as frames of at most ``chunk_rows`` rows each."""
        import pandas as pd

        start, stop = self.ranges[chunk]
        where = f"{self.path} (chunk {chunk + 1} of {len(self)})"
        try:
            if self.format == "parquet":
                import pyarrow.parquet as pq

                batches = pq.ParquetFile(self.path).iter_batches(
                    batch_size=self.chunk_rows, row_groups=[start]
                )
                for batch in batches:
                    yield mark_missing(batch.to_pandas(), self.na_values)
                return
            with open(self.path, "rb") as handle:
                handle.seek(start)
                block = handle.read(stop - start)
            yield pd.read_csv(
                io.BytesIO(self.header + block), sep=self.sep, na_values=list(self.na_values)
            )
        except (ValueError, OSError, pd.errors.ParserError) as exc:
            raise DataError(f"{where}: cannot be read as {self.format}: {exc}") from None


def table_chunks(
    path: str, chunk_rows: int, *, sep: str | None = None, na_values: Sequence[str] = ()
) -> TableChunks:
    """Index ``path`` into chunks (see :class:`TableChunks`) without reading its rows.

    A CSV is scanned once as bytes: a record ends at a line break outside double quotes, so a
    quoted field holding a line break stays in one record.
    """
    file = _existing_file(path)
    if _format(file) == "parquet":
        import pyarrow.parquet as pq

        _parquet_columns(file)
        groups = pq.ParquetFile(file).metadata.num_row_groups
        ranges = tuple((g, g + 1) for g in range(groups))
        return TableChunks(str(file), "parquet", chunk_rows, ranges, na_values=tuple(na_values))
    separator = csv_separator(file, sep)
    with file.open("rb") as handle:
        header = _csv_record(handle)
        start = position = len(header)
        records, quoted, spans = 0, False, []
        for line in iter(handle.readline, b""):
            position += len(line)
            # An odd number of quotes opens or closes a quoted field ('""' escapes one).
            quoted ^= line.count(b'"') % 2 == 1
            if quoted:
                continue
            records += 1
            if records == chunk_rows:
                spans.append((start, position))
                start, records = position, 0
        if position > start:
            spans.append((start, position))
    if not header.endswith(b"\n"):
        header += b"\n"
    return TableChunks(
        str(file), "csv", chunk_rows, tuple(spans), separator, tuple(na_values), header
    )


def _csv_record(handle: BinaryIO) -> bytes:
    """The bytes of the next record (one or more lines when a quoted field breaks a line)."""
    record = b""
    for line in iter(handle.readline, b""):
        record += line
        if record.count(b'"') % 2 == 0:
            break
    return record


def fingerprint(frame: pd.DataFrame) -> str:
    """A content hash of a table: column names, dtypes and every value, row order included."""
    import pandas as pd

    digest = hashlib.sha256()
    digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


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


def csv_separator(file: Path, sep: str | None) -> str:
    """The separator to read ``file`` with (``sep``, or one chosen from the header), once the
    header's column names are known to be unique."""
    chosen = sep or ("\t" if file.suffix.lower() == ".tsv" else ",")
    header = _csv_header(file, chosen)
    if sep is None and chosen == "," and len(header) == 1:
        guess = likely_separator(header[0], SNIFFED_SEPARATORS)
        if guess:
            log.info(
                "%s: no comma in the header; read as %r-separated (data.sep sets it)", file, guess
            )
            chosen, header = guess, _csv_header(file, guess)
    _require_unique(header, file)
    return chosen


def _csv_header(file: Path, sep: str) -> list[str]:
    """The first row's fields, parsed as pandas will (quotes included), without the rest."""
    # utf-8-sig drops a byte-order mark, as pandas does; undecodable bytes are pandas' to report.
    with file.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        try:
            return next(csv.reader(handle, delimiter=sep), [])
        except csv.Error:  # e.g. NUL bytes: pandas' own error says more
            return []


def _parquet_columns(file: Path) -> list[str]:
    """The column names in a Parquet file's schema, checked unique (pyarrow allows repeats)."""
    import pyarrow.parquet as pq

    names = list(pq.read_schema(file).names)
    _require_unique(names, file)
    return names


def _require_unique(names: list[str], file: Path) -> None:
    positions: dict[str, list[int]] = {}
    for number, name in enumerate(names, start=1):
        if name.strip():  # empty names are pandas' 'Unnamed: N' columns, distinct already
            positions.setdefault(name, []).append(number)
    repeated = {name: where for name, where in positions.items() if len(where) > 1}
    if not repeated:
        return
    if len(repeated) == 1:
        [(name, where)] = repeated.items()
        what = f"column name '{name}' appears more than once (columns {_and(where)})"
    else:
        listed = [f"'{name}' (columns {_and(where)})" for name, where in repeated.items()]
        what = f"column names {_and(listed)} appear more than once"
    raise DataError(f"{file}: {what}; rename them so every column name is unique")


def _and(items: Sequence[object]) -> str:
    """'1', '1 and 6', '2, 3 and 7'."""
    words = [str(item) for item in items]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _format(file: Path) -> str:
    return SUFFIXES[file.suffix.lower()]
