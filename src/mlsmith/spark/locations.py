"""Where a Spark prediction reads and writes: paths and URIs, the input's format, the checks on
the output, and the output put into place whole.

A bare path is a path on this machine (a ``file://`` URI for Spark); any other URI
(``hdfs://``, ``s3a://``...) is Spark's to resolve. Spark writes the output into a hidden folder
beside it, renamed into place once the job has succeeded, through Hadoop's FileSystem, so the
same holds on HDFS (on object stores such as S3 a rename is a copy, and only the hidden name
protects readers). An earlier output is replaced only by a finished one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from mlsmith.data.tables import SUFFIXES, csv_separator
from mlsmith.errors import ConfigError, DataError, MlsmithError
from mlsmith.files import sweep_stale_temporaries, temporary_path

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# What Spark's committer leaves in a finished output folder: the mark of an earlier output.
SUCCESS_FILE = "_SUCCESS"
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class Location:
    """A path as Spark reads it (``uri``) and, when it is on this machine's disk, ``local``."""

    uri: str
    local: Path | None

    def __str__(self) -> str:
        return str(self.local) if self.local is not None else self.uri


@dataclass(frozen=True)
class InputTable:
    """The table to predict: where it is, ``parquet`` or ``csv``, and a CSV's separator."""

    location: Location
    format: str
    sep: str = ","


def locate(path: str | Path) -> Location:
    """A local path (or ``file:`` URI) as an absolute ``file://`` URI; any other URI
    (``hdfs://``, ``s3a://``...) as given, for Spark to resolve."""
    text = str(path)
    if _URI_SCHEME.match(text) and not text.startswith("file:"):
        return Location(text.rstrip("/"), None)
    if text.startswith("file:"):
        text = urlparse(text).path
    local = Path(os.path.abspath(os.path.expanduser(text)))
    # Not Path.as_uri(): it percent-encodes, and Hadoop's Path would keep "%20" as is.
    return Location(f"file://{local}", local)


def input_table(path: str | Path) -> InputTable:
    """The input's format (from its suffix, or from the files in a folder) and a CSV's
    separator (chosen from its header, as the local engine does); a DataError when it is
    missing or of another type."""
    location = locate(path)
    kinds = ", ".join(sorted(SUFFIXES))
    local = location.local
    if local is None:
        suffix = PurePosixPath(urlparse(location.uri).path).suffix.lower()
        # A URI without a suffix names a folder of part files, which Spark writes as Parquet.
        fmt = SUFFIXES.get(suffix) if suffix else "parquet"
        if fmt is None:
            raise DataError(f"{location}: unsupported file type '{suffix}'; expected {kinds}")
        return InputTable(location, fmt, "\t" if suffix == ".tsv" else ",")
    if local.is_dir():
        files = [
            f
            for f in sorted(local.rglob("*"))
            # Spark skips names starting with '.' or '_' (its own marks, checksums, temporaries).
            if f.is_file() and not any(p.startswith((".", "_")) for p in f.relative_to(local).parts)
        ]
        formats = {SUFFIXES.get(f.suffix.lower()) for f in files} - {None}
        if len(formats) != 1:
            found = "both CSV and Parquet files" if formats else f"no {kinds} files"
            raise DataError(f"{local}: the folder holds {found}; Spark reads one table of one type")
        fmt = formats.pop() or "parquet"
        first = next(f for f in files if SUFFIXES.get(f.suffix.lower()) == fmt)
        return InputTable(location, fmt, csv_separator(first, None) if fmt == "csv" else ",")
    if not local.is_file():
        raise DataError(f"data file not found: {local}")
    fmt = SUFFIXES.get(local.suffix.lower()) or ""
    if not fmt:
        raise DataError(f"{local}: unsupported file type '{local.suffix}'; expected {kinds}")
    return InputTable(location, fmt, csv_separator(local, None) if fmt == "csv" else ",")


def check_output(output: Location, table: InputTable) -> None:
    """A DataError or ConfigError, before Spark starts, for an output that cannot be written:
    a CSV name, the input itself (or a folder around or inside it), or a file or folder that is
    not an earlier prediction output (replacing it would delete it)."""
    suffix = PurePosixPath(urlparse(output.uri).path).suffix.lower()
    if SUFFIXES.get(suffix) == "csv":
        raise DataError(
            f"--output {output}: --engine spark writes Parquet, as a folder of part files; "
            f"name the output without '{suffix}' (e.g. "
            f"{PurePosixPath(urlparse(output.uri).path).stem}.parquet)"
        )
    source = table.location
    if source.local is not None and output.local is not None:
        a, b = source.local.resolve(), output.local.resolve()
        same, inside, around = a == b, a in b.parents, b in a.parents
    else:
        a_uri, b_uri = source.uri.rstrip("/"), output.uri.rstrip("/")
        same = a_uri == b_uri
        inside, around = b_uri.startswith(a_uri + "/"), a_uri.startswith(b_uri + "/")
    if same or around:
        what = "the input" if same else "a folder holding the input"
        raise ConfigError(
            f"--output {output} is {what}: writing the predictions would delete the rows they "
            "are made from; write them to another path"
        )
    if inside:
        raise ConfigError(
            f"--output {output} is inside the input folder {source}: its part files would be "
            "read as input rows by the next job; write the predictions elsewhere"
        )
    if output.local is not None and output.local.exists() and not _is_earlier_output(output.local):
        raise ConfigError(_in_the_way(output))


@contextmanager
def replacing(spark: SparkSession, output: Location) -> Iterator[str]:
    """A hidden folder beside ``output`` for Spark to write into; once the block succeeds it
    replaces ``output`` by renames, through Hadoop's FileSystem (local disk, HDFS...)."""
    context: Any = spark.sparkContext
    # Spark's own FileSystem API, reached through its JVM gateway: pyspark has no Python one.
    hadoop = context._jvm.org.apache.hadoop.fs
    target = hadoop.Path(output.uri)
    files = target.getFileSystem(context._jsc.hadoopConfiguration())
    if output.local is not None:
        sweep_stale_temporaries(output.local.parent)  # folders a killed job left behind

    def beside() -> Any:
        # Hidden (Spark and Hadoop skip names starting with '.'), and named after this host and
        # process, so a later run on this host removes it if this one is killed.
        return hadoop.Path(target.getParent(), temporary_path(Path(target.getName())).name)

    temporary = beside()
    try:
        yield str(temporary.toString())
        # Checked again: something may have appeared there while the job ran.
        if files.exists(target) and not files.exists(hadoop.Path(target, SUCCESS_FILE)):
            raise ConfigError(_in_the_way(output))
        previous = None
        if files.exists(target):
            previous = beside()
            _rename(files, target, previous, output)
        try:
            _rename(files, temporary, target, output)
        except MlsmithError:
            if previous is not None:
                files.rename(previous, target)
            raise
        if previous is not None:
            files.delete(previous, True)
    finally:
        files.delete(temporary, True)


def _rename(files: Any, source: Any, target: Any, output: Location) -> None:
    if not files.rename(source, target):
        raise MlsmithError(f"cannot write {output}: renaming {source} to {target} failed")


def _is_earlier_output(path: Path) -> bool:
    return path.is_dir() and (path / SUCCESS_FILE).is_file()


def _in_the_way(output: Location) -> str:
    return (
        f"--output {output} exists and is not an earlier prediction output (a folder with a "
        f"{SUCCESS_FILE} file); replacing it would delete it: choose another path or remove it"
    )
