"""Batch prediction on Apache Spark: a model package over every partition of a table.

:func:`predict_on_spark` reads a Parquet or CSV table (a file, a folder of part files, or a URI
Spark reads: ``hdfs://``, ``s3a://``...), ships the package folder to the executors with the
job's files, runs it over each partition with ``mapInPandas`` (:mod:`mlsmith.spark.executor`)
and writes partitioned Parquet: a folder of part files holding the ``keep`` columns, then
``prediction`` and ``proba_<class>``, the columns ``mlsmith predict`` writes.

Spark reads a CSV as text and the executors type it as pandas does, so both engines read a file
alike. The output appears whole or not at all (:mod:`mlsmith.spark.locations`); the session and
what is set up around the job are :mod:`mlsmith.spark.session`'s.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsmith.errors import ConfigError, DataError, MissingExtraError, RunError
from mlsmith.runtime.frames import require_columns
from mlsmith.runtime.package import Package
from mlsmith.spark.executor import (
    CSV_MISSING,
    PartitionPredictor,
    data_error_message,
    typed_like_read_csv,
)
from mlsmith.spark.locations import InputTable, check_output, input_table, locate, replacing
from mlsmith.spark.session import (
    arrow_batch_rows,
    pandas_version_warnings_off,
    session,
    ship_by_value,
    staged,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import DataType, StructType

# The first rows of a CSV whose text decides the Spark type of each --keep column.
KEEP_SAMPLE_ROWS = 10_000


def predict_on_spark(
    package_dir: Path,
    input_path: str | Path,
    output_path: str | Path,
    *,
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
    chunk_rows: int = 50_000,
    keep_columns: Sequence[str] = (),
) -> int:
    """Predict a table with the package in ``package_dir`` on Spark; returns the row count.

    ``master`` is Spark's master URL (``local[4]``, ``spark://host:7077``, ``yarn``...; default:
    the running session's, else Spark's own default); ``conf`` more Spark settings for a session
    started here. Executors need the package's requirements and pyarrow, not mlsmith.
    ``chunk_rows`` rows go through the package at a time; ``keep_columns`` are copied from the
    input into the output (an id to join the predictions back on).
    """
    _require_pyspark()
    from pyspark.sql import Observation
    from pyspark.sql.functions import count, lit

    table = input_table(input_path)
    output = locate(output_path)
    check_output(output, table)
    model = _PackageInfo.read(Path(package_dir))
    keep = list(dict.fromkeys(keep_columns))
    clashes = [c for c in keep if c in model.output_names]
    if clashes:
        raise DataError(
            f"--keep column '{clashes[0]}' has the name of an output column "
            f"({', '.join(model.output_names)}); rename it in {table.location}"
        )
    with (
        pandas_version_warnings_off(),
        session(master, conf) as (spark, owned),
        staged(model.folder, remove=owned) as folder,
        arrow_batch_rows(spark, chunk_rows),
        _job_errors(table),
    ):
        spark.sparkContext.addFile(str(folder), recursive=True)
        frame = _read(spark, table, keep)
        source = str(table.location)
        require_columns(_empty_frame(frame.columns), model.package.columns, source, "feature")
        require_columns(_empty_frame(frame.columns), keep, source, "--keep")
        csv_missing = sorted(CSV_MISSING | set(model.na_values))
        predictor = PartitionPredictor(
            package=folder.name,
            runtime=model.runtime,
            features=model.package.columns,
            keep=keep,
            source=source,
            csv_missing=csv_missing if table.format == "csv" else None,
        )
        ship_by_value()
        needed = frame.select(*(_column(c) for c in dict.fromkeys([*keep, *model.package.columns])))
        schema = _output_schema(needed, keep, model.output_schema)
        # The rows written, counted by Spark as the job runs (not re-read from the output).
        counted = Observation("mlsmith predict")
        result = needed.mapInPandas(predictor, schema).observe(counted, count(lit(1)).alias("n"))
        with replacing(spark, output) as temporary:
            result.write.parquet(temporary)
            rows = int(counted.get["n"])
            if rows == 0:
                raise DataError(f"{table.location}: no rows to predict")
    return rows


@dataclass(frozen=True)
class _PackageInfo:
    """What the driver needs of a package: the runtime (loaded here, so a broken package fails
    before any executor starts), the runtime's folder name under ``code/``, the strings it
    reads as missing and the output's Spark schema (from the package's MLflow signature)."""

    folder: Path
    package: Package
    runtime: str
    na_values: list[str]
    output_schema: StructType

    @property
    def output_names(self) -> list[str]:
        return list(self.output_schema.fieldNames())

    @classmethod
    def read(cls, folder: Path) -> _PackageInfo:
        if not (folder / "MLmodel").is_file():
            raise RunError(
                f"{folder}: --engine spark needs the whole package folder (MLmodel, code/, data/)"
            )
        with warnings.catch_warnings():
            # MLflow's own response types warn about their type hints when first imported.
            warnings.simplefilter("ignore", UserWarning)
            from mlflow.models import Model

        model = Model.load(str(folder))
        flavor = model.flavors.get("python_function", {})
        runtime = str(flavor.get("loader_module", "")).split(".")[0]
        signature = model.get_output_schema()
        if not runtime or flavor.get("code") != "code" or signature is None:
            raise RunError(f"{folder}: not an mlsmith package (its MLmodel has no runtime code)")
        package = Package(folder)
        if package.kind == "image":
            raise ConfigError(
                f"{folder}: --engine spark predicts tabular and text packages; this one reads "
                "image files, which the local engine predicts (drop --engine spark)"
            )
        na_values = getattr(package.encoder.inner, "na_values", [])
        return cls(folder, package, runtime, [str(v) for v in na_values], _spark_schema(signature))


def _spark_schema(signature: Any) -> StructType:
    from pyspark.sql.types import StructField, StructType

    schema = signature.as_spark_schema()
    # Nullable: a regression package may answer NaN for rows it cannot score.
    return StructType([StructField(f.name, f.dataType, nullable=True) for f in schema.fields])


def _require_pyspark() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise MissingExtraError("pyspark", "spark", "--engine spark") from None


def _read(spark: SparkSession, table: InputTable, keep: list[str]) -> DataFrame:
    """The input as a Spark DataFrame; a CSV's fields as text (typed on the executors as pandas
    types them), except the --keep columns, which Spark parses as their first rows show."""
    uri = table.location.uri
    if table.format == "parquet":
        return spark.read.parquet(uri)
    options = {
        "header": "true",
        "sep": table.sep,
        # RFC 4180 quoting, as pandas writes and reads it (Spark's default escape is '\').
        "escape": '"',
        # A row with too many or too few fields is an error, as in pandas, not a row of nulls.
        "mode": "FAILFAST",
        # The header's names are checked against the schema given below, not assumed.
        "enforceSchema": "false",
    }
    text = spark.read.options(**options).csv(uri)  # all columns strings: reads only the header
    types = _keep_types(text, keep)
    if not types:
        return text
    from pyspark.sql.types import StringType, StructField, StructType

    schema = StructType([StructField(c, types.get(c, StringType())) for c in text.columns])
    return spark.read.options(**options).schema(schema).csv(uri)


def _keep_types(text: DataFrame, keep: list[str]) -> dict[str, DataType]:
    """The Spark type of each --keep column, from the types pandas gives its first rows."""
    missing = [c for c in keep if c not in text.columns]
    if not keep or missing:
        return {}  # the missing column is reported with the feature columns
    import pandas as pd
    from pyspark.sql.types import BooleanType, DoubleType, LongType, StringType

    rows = text.select(*(_column(c) for c in keep)).limit(KEEP_SAMPLE_ROWS).collect()
    sample = typed_like_read_csv(
        pd.DataFrame([r.asDict() for r in rows], columns=keep, dtype=object), CSV_MISSING
    )
    spark_types: dict[str, DataType] = {
        "boolean": BooleanType(),
        "integer": LongType(),
        "floating": DoubleType(),
        "mixed-integer-float": DoubleType(),
        "empty": DoubleType(),  # pandas reads a column with no values as float NaNs
    }
    return {
        column: spark_types.get(pd.api.types.infer_dtype(sample[column]), StringType())
        for column in keep
    }


def _output_schema(frame: DataFrame, keep: list[str], outputs: StructType) -> StructType:
    from pyspark.sql.types import StructType

    fields = {f.name: f for f in frame.schema.fields}
    return StructType([*(fields[c] for c in keep), *outputs.fields])


def _column(name: str) -> Column:
    """A column by its exact name (a dot in a name would otherwise read as a struct field)."""
    from pyspark.sql.functions import col

    return col("`" + name.replace("`", "``") + "`")


def _empty_frame(columns: list[str]) -> Any:
    import pandas as pd

    return pd.DataFrame(columns=columns)


@contextmanager
def _job_errors(table: InputTable) -> Iterator[None]:
    """Spark's errors that are the input's fault as DataErrors, naming it; others as they are."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    try:
        yield
    except (PySparkException, Py4JError) as error:
        text = str(error)
        message = data_error_message(text)
        if message is not None:
            raise DataError(message) from None
        if "PATH_NOT_FOUND" in text:
            raise DataError(f"data file not found: {table.location}") from None
        if "Malformed records are detected" in text or "MALFORMED_RECORD" in text:
            raise DataError(
                f"{table.location}: a CSV row does not parse: it has more or fewer fields than "
                "the header, or a --keep column holds a value of another type than in the first "
                "rows (a field with a line break also splits a row: write such tables as Parquet)"
            ) from None
        raise
