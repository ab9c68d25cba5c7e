"""Prediction on raw rows: in memory for a DataFrame, chunk by chunk for files of any size."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.data.tables import SUFFIXES, iter_table, require_columns
from mlsmith.errors import DataError
from mlsmith.files import atomic_path

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.models.base import Model
    from mlsmith.tasks import Task


def decoded_frame(task: Task, decoded: np.ndarray) -> pd.DataFrame:
    """``prediction`` (original labels or values) and, for classes, ``proba_<class>`` columns."""
    import pandas as pd

    columns: dict[str, np.ndarray] = {"prediction": task.labels(decoded)}
    for i, label in enumerate(task.classes):
        columns[f"proba_{label}"] = decoded[:, i]
    return pd.DataFrame(columns)


def predict_frame(model: Model, frame: pd.DataFrame, source: str = "input") -> pd.DataFrame:
    """Predictions for raw rows, index aligned with ``frame``."""
    inputs = model.preprocessor.transform(frame, source)
    out = decoded_frame(model.task, model.predict(inputs))
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
    fmt = SUFFIXES.get(output_path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{output_path}: unsupported output type '{output_path.suffix}'; use .csv or .parquet"
        )
    keep = keep_columns or []
    rows = 0
    writer: Any = None
    with atomic_path(output_path) as tmp:
        try:
            for chunk in iter_table(input_path, chunk_rows):
                require_columns(chunk, keep, input_path, "--keep")
                out = predict_frame(model, chunk, input_path)
                if keep:
                    out = chunk[keep].join(out)
                if fmt == "csv":
                    out.to_csv(tmp, mode="a" if rows else "w", header=rows == 0, index=False)
                else:
                    writer = _write_parquet(out, tmp, writer)
                rows += len(out)
        finally:
            if writer is not None:
                writer.close()
        if rows == 0:
            raise DataError(f"{input_path}: no rows to predict")
    return rows


def _write_parquet(frame: pd.DataFrame, path: Path, writer: Any) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if writer is None:
        writer = pq.ParquetWriter(path, table.schema)
    else:
        # CSV chunks can infer different dtypes for the same column; the first chunk decides.
        table = table.cast(writer.schema)
    writer.write_table(table)
    return writer
