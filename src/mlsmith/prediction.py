"""Prediction on raw rows: in memory for a DataFrame, chunk by chunk for files of any size."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.data.tables import SUFFIXES
from mlsmith.errors import ConfigError, DataError
from mlsmith.files import atomic_path
from mlsmith.runtime.frames import require_columns
from mlsmith.runtime.outputs import output_frame, ranking_frame

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.models.base import Model
    from mlsmith.tasks import Task


def decoded_frame(
    task: Task, decoded: np.ndarray, groups: np.ndarray | None = None
) -> pd.DataFrame:
    """``prediction`` (original labels or values) and, for classes, ``proba_<class>`` columns;
    a binary task's threshold decides the label. A ranking's table is ``score`` and ``rank``
    within each query (``groups``; None: the rows are one query's items)."""
    if task.kind == "ranking":
        return ranking_frame(decoded, groups)
    return output_frame(task.classes, decoded, task.threshold)


def output_columns(task: Task) -> list[str]:
    """The columns :func:`decoded_frame` writes for ``task``."""
    if task.kind == "ranking":
        return ["score", "rank"]
    return ["prediction", *(f"proba_{label}" for label in task.classes)]


# Rows per chunk meaning "all of them".
_WHOLE_FILE = 2**62


def predict_frame(model: Model, frame: pd.DataFrame, source: str = "input") -> pd.DataFrame:
    """Predictions for raw rows, index aligned with ``frame``.

    A ranking model ranks the rows within each query of its ``data.group_column`` when the
    rows hold it, and all the rows as one query's items when they do not.
    """
    inputs = model.preprocessor.transform(frame, source)
    if len(frame) == 0:
        # Models may return a (0, 1) array for no rows whatever their output width.
        task = model.task
        decoded = np.zeros((0, len(task.classes)) if task.is_classification else 0)
    else:
        decoded = model.predict(inputs)
    column = getattr(model.preprocessor, "group_column", None)
    groups = model.preprocessor.query_groups(frame, source) if column in frame.columns else None
    out = decoded_frame(model.task, decoded, groups)
    out.index = frame.index
    return out


def predict_file(
    model: Model,
    input_path: str,
    output_path: Path,
    *,
    chunk_rows: int = 50_000,
    keep_columns: list[str] | None = None,
) -> int:
    """Stream ``input_path`` through the model into ``output_path`` (CSV or Parquet).

    Only one chunk is in memory at a time. The output appears in one rename at the end, so a
    failure midway leaves no half-written file (and any previous output untouched).
    """
    if _same_file(Path(input_path), output_path):
        raise ConfigError(
            f"--output {output_path} is the input file: the predictions would replace the rows "
            "they are made from; write them to another path"
        )
    fmt = SUFFIXES.get(output_path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{output_path}: unsupported output type '{output_path.suffix}'; use .csv or .parquet"
        )
    # The kind's identifying columns (an image's path) first; a column asked twice is kept once.
    keep = list(dict.fromkeys([*model.preprocessor.output_columns, *(keep_columns or [])]))
    outputs = output_columns(model.task)
    if model.task.kind == "ranking":
        # A query's items may lie anywhere in the file and are ranked against each other:
        # read it whole (scores and ranks are a few numbers a row).
        chunk_rows = _WHOLE_FILE
    clashes = [c for c in keep if c in outputs]
    if clashes:
        raise DataError(
            f"--keep column '{clashes[0]}' has the name of an output column "
            f"({', '.join(outputs)}); rename it in {input_path}"
        )
    sep = "\t" if output_path.suffix.lower() == ".tsv" else ","  # as read_table reads it
    rows = 0
    writer: Any = None
    with atomic_path(output_path) as tmp:
        try:
            for chunk in model.preprocessor.iter_read(input_path, chunk_rows):
                require_columns(chunk, keep_columns or [], input_path, "--keep")
                if len(chunk) == 0:
                    continue
                out = predict_frame(model, chunk, input_path)
                # The kind's own columns where the input has them (a ranking's query id).
                kept = [c for c in keep if c in chunk.columns]
                if kept:
                    out = chunk[kept].join(out)
                if fmt == "csv":
                    out.to_csv(
                        tmp, sep=sep, mode="a" if rows else "w", header=rows == 0, index=False
                    )
                else:
                    writer = _write_parquet(out, tmp, writer, input_path)
                rows += len(out)
        finally:
            if writer is not None:
                writer.close()
        if rows == 0:
            raise DataError(f"{input_path}: no rows to predict")
    return rows


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (through links, ``..`` or a different spelling)."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _write_parquet(frame: pd.DataFrame, path: Path, writer: Any, source: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if writer is None:
        writer = pq.ParquetWriter(path, table.schema)
    else:
        # CSV chunks can infer different dtypes for the same column; the first chunk decides.
        try:
            table = table.cast(writer.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            changed = [
                f"'{field.name}' ({writer.schema.field(field.name).type} in the first chunk, "
                f"{field.type} later)"
                for field in table.schema
                if field.type != writer.schema.field(field.name).type
            ]
            raise DataError(
                f"{source}: column {', '.join(changed)} changes type between chunks, which one "
                "Parquet file cannot hold; write .csv, or raise --chunk-rows so the first chunk "
                "shows the column's real type"
            ) from None
    writer.write_table(table)
    return writer
