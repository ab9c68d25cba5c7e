"""A model package: raw rows in, predictions out, with nothing of mlsmith's training stack.

A package directory (``<run>/package/`` in MLflow's model format) keeps its payload under
``data/``: ``package.json`` (what the model is and which file serves it), ``preprocessing.json``
(the run's fitted preprocessing, as training wrote it), the model file (``model.onnx``, or the
booster's own file) and ``export.json`` (what was verified when it was written).
:class:`Package` reads that directory; :meth:`Package.predict` is what every consumer calls:
the MLflow pyfunc, ``mlsmith.load_package``, the server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import text
from .drift import REFERENCE_FILE, Reference
from .engines import Engine, LightGBMEngine, OnnxEngine, XGBoostEngine
from .errors import DataError
from .images import ImageEncoder
from .outputs import Decoder
from .tabular import TableEncoder

if TYPE_CHECKING:
    import pandas as pd

# 2: a binary task may carry a decision threshold (older runtimes would ignore it and answer
# with the most probable class, so such packages say 2; every other package still says 1).
FORMAT_VERSION = 2
PACKAGE_FILE = "package.json"
PREPROCESSING_FILE = "preprocessing.json"


def package_format(task: dict[str, Any]) -> int:
    """The oldest package format that reads a package of ``task`` (as saved) correctly."""
    return 2 if task.get("threshold") is not None else 1


EXPORT_FILE = "export.json"
DATA_DIR = "data"
# The payload's folder name under ``data/`` (MLflow copies the data path in by its name).
PAYLOAD_DIR = "mlsmith"


class Encoder:
    """Raw rows to encoded inputs, for one data kind."""

    def __init__(self, kind: str, state: dict[str, Any]) -> None:
        self.kind = kind
        self.inner: TableEncoder | text.TextEncoder | ImageEncoder
        if kind == "tabular":
            self.inner = TableEncoder(
                numeric=state["numeric"],
                medians=state["medians"],
                means=state["means"],
                stds=state["stds"],
                categorical=state["categorical"],
                vocabularies=state["vocabularies"],
                na_values=state.get("na_values") or [],
            )
            self.columns = self.inner.features
        elif kind == "text":
            self.inner = text.TextEncoder(
                tokenizer=state["tokenizer"],
                text_column=state["text_column"],
                max_length=state["max_length"],
            )
            self.columns = [state["text_column"]]
        elif kind == "image":
            self.inner = ImageEncoder(
                channels=state["channels"], height=state["height"], width=state["width"]
            )
            self.columns = ["path"]
        else:
            raise DataError(f"a package of data kind '{kind}' needs a newer mlsmith runtime")

    def transform(self, frame: pd.DataFrame, source: str) -> dict[str, np.ndarray]:
        """Encoded inputs of every row (for text: ids and lengths, batched later)."""
        return self.inner.transform(frame, source)

    def transform_columns(
        self, columns: Mapping[str, object], n: int
    ) -> dict[str, np.ndarray] | None:
        """Encoded inputs of ``n`` rows given as arrays by column, where the kind can do without
        a DataFrame (tabular); None otherwise."""
        if isinstance(self.inner, TableEncoder):
            return self.inner.transform_columns(columns, n)
        return None

    def batch(self, encoded: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
        """The network's inputs for rows [start, stop)."""
        part = {k: v[start:stop] for k, v in encoded.items()}
        return text.model_inputs(part) if self.kind == "text" else part


class Package:
    """A package directory loaded for prediction."""

    def __init__(self, directory: str | Path, *, providers: list[str] | None = None) -> None:
        root = Path(directory)
        data = root / DATA_DIR / PAYLOAD_DIR if (root / "MLmodel").is_file() else root
        self.directory = data
        self.info: dict[str, Any] = _read_json(data / PACKAGE_FILE)
        if int(self.info.get("format_version", 0)) > FORMAT_VERSION:
            raise DataError(
                f"{data / PACKAGE_FILE}: package format {self.info['format_version']} is newer "
                f"than this runtime reads ({FORMAT_VERSION}); upgrade mlsmith"
            )
        if self.info.get("kind") == "forecast":
            raise DataError(
                f"{data}: a forecasting package forecasts series rather than predicting rows; "
                "load it with mlsmith.load_package (or mlsmith_runtime.loading.load)"
            )
        if self.info.get("kind") in ("segmentation", "detection"):
            raise DataError(
                f"{data}: a {self.info['kind']} package predicts images' masks or boxes rather "
                "than rows; load it with mlsmith.load_package (or mlsmith_runtime.loading.load)"
            )
        state = _read_json(data / PREPROCESSING_FILE)
        self.kind: str = state["kind"]
        self.decoder = Decoder(state["task"])
        # A ranking's query id column: rows that hold it are ranked within each query.
        self.group_column: str | None = state.get("group_column")
        self.encoder = Encoder(self.kind, state)
        self.batch_size = int(self.info.get("batch_size", 1024))
        self.engine = self._engine(data / self.info["model_file"], state, providers)
        self._reference = _read_reference(data / REFERENCE_FILE)

    @property
    def family(self) -> str:
        return str(self.info["family"])

    @property
    def columns(self) -> list[str]:
        """The raw input columns the package reads."""
        return list(self.encoder.columns)

    @property
    def classes(self) -> list[Any]:
        return self.decoder.classes

    @property
    def reference(self) -> Reference | None:
        """The training split's statistics drift is measured against (None: a package written
        before packages carried them)."""
        return self._reference

    def raw(self, frame: pd.DataFrame, source: str = "input") -> np.ndarray:
        """Raw outputs (n, n_outputs) for raw rows."""
        return self._run(self.encoder.transform(frame, source), len(frame))

    def raw_columns(self, columns: Mapping[str, object], n: int) -> np.ndarray:
        """:meth:`raw` for ``n`` rows given as arrays by column (a server's batch): a tabular
        package reads them without building a DataFrame (the larger part of a one-row call)."""
        encoded = self.encoder.transform_columns(columns, n)
        if encoded is None:
            import pandas as pd

            return self.raw(pd.DataFrame(dict(columns)))
        return self._run(encoded, n)

    def _run(self, encoded: dict[str, np.ndarray], n: int) -> np.ndarray:
        chunks = [
            self.engine.raw(self.encoder.batch(encoded, start, min(start + self.batch_size, n)))
            for start in range(0, n, self.batch_size)
        ]
        if not chunks:
            return np.zeros((0, self.decoder.n_outputs), dtype=np.float32)
        return np.concatenate(chunks)

    def predict(self, frame: pd.DataFrame, source: str = "input") -> pd.DataFrame:
        """``prediction`` and, for classification, ``proba_<class>`` per row (a ranking's
        ``score`` and ``rank``), as ``mlsmith predict`` writes them; index aligned with
        ``frame``."""
        column = self.group_column
        groups = frame[column].to_numpy() if column and column in frame.columns else None
        out = self.decoder.frame(self.raw(frame, source), groups)
        out.index = frame.index
        return out

    def _engine(self, file: Path, state: dict[str, Any], providers: list[str] | None) -> Engine:
        engine = self.info["engine"]
        if engine == "onnx":
            return OnnxEngine(file, providers=providers)
        n_outputs = self.decoder.n_outputs
        if engine == "lightgbm":
            return LightGBMEngine(file, n_outputs=n_outputs)
        if engine == "xgboost":
            return XGBoostEngine(
                file,
                n_outputs=n_outputs,
                n_numeric=len(state["numeric"]),
                n_categorical=len(state["categorical"]),
            )
        raise DataError(f"{self.directory / PACKAGE_FILE}: unknown engine '{engine}'")


def _read_reference(file: Path) -> Reference | None:
    # Read now: a package loaded from the registry is read from a download deleted afterwards.
    if not file.is_file():
        return None
    try:
        return Reference.from_dict(_read_json(file))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{file}: not readable ({exc})") from None


def _read_json(file: Path) -> dict[str, Any]:
    try:
        value = json.loads(file.read_text())
    except FileNotFoundError:
        raise DataError(f"{file}: not found; not an mlsmith package") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{file}: not readable ({exc})") from None
    if not isinstance(value, dict):
        raise DataError(f"{file}: expected a JSON object")
    return value
