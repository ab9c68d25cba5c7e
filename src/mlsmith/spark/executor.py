"""What runs on Spark's executors: a model package over the pandas batches of one partition.

An executor has the model package (shipped with the job's files; its ``code/`` folder holds the
inference runtime) and the package's own requirements plus pyarrow; it has neither mlsmith nor
torch. So this module is not imported there: the driver registers it with cloudpickle to be
shipped *by value* inside the job, and it may import nothing of mlsmith, only the standard
library, pandas and pyspark's worker modules. The runtime is imported from the package's folder.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# What pandas' CSV reader reads as missing by default (the ``na_values`` list in the
# ``pandas.read_csv`` docs); a test holds it equal to pandas' own set.
CSV_MISSING = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)
# The words pandas' CSV reader turns a column of into booleans.
CSV_BOOLEANS = {
    **dict.fromkeys(("True", "TRUE", "true"), True),
    **dict.fromkeys(("False", "FALSE", "false"), False),
}

# A package's DataError crosses to the driver as text inside Spark's error: these marks let the
# driver find its message there and report it as mlsmith's own DataError.
ERROR_START = "<<mlsmith-data-error>>"
ERROR_END = "<</mlsmith-data-error>>"
_ERROR = re.compile(re.escape(ERROR_START) + "(.*?)" + re.escape(ERROR_END), re.DOTALL)


class PartitionPredictor:
    """The function ``mapInPandas`` runs: each batch of raw rows to its prediction table,
    ``keep`` columns first, as ``mlsmith predict`` writes it."""

    def __init__(
        self,
        *,
        package: str,
        runtime: str,
        features: list[str],
        keep: list[str],
        source: str,
        csv_missing: list[str] | None,
    ) -> None:
        self.package = package  # the package folder's name among the job's files
        self.runtime = runtime  # the runtime's folder name under the package's code/
        self.features = features
        self.keep = keep
        self.source = source
        # CSV text read as missing; None for typed input (Parquet) that needs no parsing.
        self.csv_missing = csv_missing

    def __call__(self, batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        root, runtime = load_runtime(self.package, self.runtime)
        errors = importlib.import_module(f"{runtime.__name__}.errors")
        try:
            # Once per partition: about a millisecond for a small MLP (an ONNX Runtime session).
            package = importlib.import_module(f"{runtime.__name__}.package").Package(
                root, providers=["CPUExecutionProvider"]
            )
            for number, batch in enumerate(batches):
                rows = batch[self.features]
                if self.csv_missing is not None:
                    rows = typed_like_read_csv(rows, self.csv_missing)
                try:
                    out = package.predict(rows, self.source)
                except errors.DataError as error:
                    # The runtime counts rows from the start of the batch it was given.
                    where = f"Spark partition {_partition()}, batch {number}"
                    message = f"{error} [{where}; rows count from its start]"
                    raise errors.DataError(message) from None
                if self.keep:
                    out = pd.concat([batch[self.keep], out], axis=1)
                yield out
        except errors.DataError as error:
            raise ValueError(f"{ERROR_START}{error}{ERROR_END}") from None


def load_runtime(package: str, runtime: str) -> tuple[Path, ModuleType]:
    """The package's folder on this executor and its inference runtime, imported from the
    package's ``code/`` folder under a name of its own.

    Spark reuses Python workers across jobs, and two packages may carry different runtime
    versions: each is imported under a module name derived from its package's unique name.
    """
    from pyspark import SparkFiles

    root = Path(SparkFiles.get(package))
    name = runtime + "_" + re.sub(r"\W", "_", package)
    if name not in sys.modules:
        folder = root / "code" / runtime
        spec = importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        if spec is None or spec.loader is None:
            raise ImportError(f"{folder}: no inference runtime in the package")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return root, sys.modules[name]


def _partition() -> int | str:
    from pyspark import TaskContext

    context = TaskContext.get()
    return context.partitionId() if context is not None else "?"


def typed_like_read_csv(frame: pd.DataFrame, missing: Iterable[str]) -> pd.DataFrame:
    """CSV fields read as text, typed as ``pandas.read_csv`` types them (what ``mlsmith
    predict`` reads): ``missing`` strings become NaN, a column whose other values are all numbers
    becomes numeric, one of only True/False words becomes booleans; the rest stays text."""
    import pandas as pd

    words = set(missing)
    columns: dict[Any, Any] = {}
    for name in frame.columns:
        column = frame[name]
        if not (pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)):
            columns[name] = column
            continue
        column = column.mask(column.isin(words))
        present = column.notna()
        numbers = pd.to_numeric(column, errors="coerce")
        if bool((numbers.notna() == present).all()):
            columns[name] = numbers
        elif bool(present.any()) and bool(column[present].isin(CSV_BOOLEANS).all()):
            columns[name] = column.map(CSV_BOOLEANS)
        else:
            columns[name] = column
    return pd.DataFrame(columns, index=frame.index)


def data_error_message(text: str) -> str | None:
    """The message of a package's DataError carried in the text of Spark's error, if any."""
    match = _ERROR.search(text)
    return match.group(1) if match else None
