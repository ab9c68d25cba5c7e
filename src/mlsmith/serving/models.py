"""The models a server holds: packages loaded by reference, their v2 signature, hot swaps.

A reference is a run directory, a package directory or ``models:/NAME@ALIAS`` (or
``models:/NAME/VERSION``). A registry alias can move (a promotion, a rollback): a
:class:`ModelSlot` holds whichever version is current and :meth:`ModelSlot.refresh` loads the new
one beside it and swaps it in with one assignment, so a request in flight finishes on the version
it started with and none fails.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.errors import did_you_mean
from mlsmith.runtime.package import Package
from mlsmith.serving.protocol import BYTES, NUMERIC, ProtocolError, Tensor, check_text

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

REGISTRY_PREFIX = "models:/"


@dataclass(frozen=True)
class InputSpec:
    """One raw input column as the v2 metadata describes it."""

    name: str
    datatype: str  # what the metadata advertises
    accepts: tuple[str, ...]  # every datatype a request may send for it
    role: str  # numeric | categorical | text | image


@dataclass(frozen=True)
class Loaded:
    """One loaded version of a model: what a request runs on from start to end."""

    package: Package
    version: str
    source: str  # where it was loaded from, for logs and metadata


@dataclass(frozen=True)
class Rows:
    """A request's raw rows as numpy columns: a DataFrame is built once per batched call, not
    once per request (pandas costs a fraction of a millisecond per frame, more than the model)."""

    columns: dict[str, Any]  # column -> array (or list of image bytes) of ``n`` values
    n: int

    def __len__(self) -> int:
        return self.n

    def frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.columns)

    @staticmethod
    def merge(parts: list[Rows]) -> Rows:
        """One request's rows after another's, for one inference call."""
        if len(parts) == 1:
            return parts[0]
        columns = {
            name: np.concatenate(
                [
                    np.asarray(p.columns[name], dtype=object)
                    if isinstance(p.columns[name], list)
                    else p.columns[name]
                    for p in parts
                ]
            )
            for name in parts[0].columns
        }
        return Rows(columns, sum(p.n for p in parts))


@dataclass(frozen=True)
class Answer:
    """Predictions as arrays: ``labels`` (the label or value per row) and, for classification,
    ``proba`` (rows x classes); sliced per request without pandas."""

    labels: np.ndarray
    proba: np.ndarray | None

    def __len__(self) -> int:
        return len(self.labels)

    def part(self, start: int, stop: int) -> Answer:
        return Answer(
            self.labels[start:stop], None if self.proba is None else self.proba[start:stop]
        )

    @staticmethod
    def of(package: Package, predictions: pd.DataFrame) -> Answer:
        """``Package.predict``'s table as arrays (once per inference call)."""
        labels = predictions["prediction"].to_numpy()
        classes = package.classes
        if not classes:
            return Answer(labels.astype(np.float64), None)
        # Column by column: selecting a list of columns is a pandas take, slower per call.
        proba = np.empty((len(labels), len(classes)), dtype=np.float64)
        for j, c in enumerate(classes):
            proba[:, j] = predictions[f"proba_{c}"].to_numpy(dtype=np.float64)
        return Answer(labels, proba)

    @staticmethod
    def decode(package: Package, raw: np.ndarray) -> Answer:
        """The package's raw outputs as an answer, without the output table between them."""
        from mlsmith.runtime.outputs import class_labels

        decoded = package.decoder.decoded(raw)
        if not package.classes:
            return Answer(np.asarray(decoded, dtype=np.float64).reshape(-1), None)
        proba = np.asarray(decoded, dtype=np.float64)
        return Answer(class_labels(package.classes, proba, package.decoder.threshold), proba)

    def frame(self, classes: list[Any]) -> pd.DataFrame:
        """Back to ``Package.predict``'s table (for the prediction log)."""
        import pandas as pd

        from mlsmith.runtime.outputs import output_frame

        if self.proba is None:
            return pd.DataFrame({"prediction": self.labels})
        out = output_frame(classes, self.proba)
        out["prediction"] = self.labels
        return out


def load(reference: str, tracking_uri: str | None = None) -> Loaded:
    """Load ``reference``; its version is the registry's number, else "1"."""
    from mlsmith.registry.loading import load_package

    version = "1"
    if reference.startswith(REGISTRY_PREFIX):
        version = registry_version(reference, tracking_uri)
        # Pin the version just read, so the files loaded are the ones the version names.
        name = reference[len(REGISTRY_PREFIX) :].split("@")[0].split("/")[0]
        package = load_package(f"{REGISTRY_PREFIX}{name}/{version}", tracking_uri=tracking_uri)
    else:
        package = load_package(Path(reference), tracking_uri=tracking_uri)
    return Loaded(package, version, reference)


def registry_version(reference: str, tracking_uri: str | None) -> str:
    """The version number a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` names now."""
    from mlsmith.errors import ConfigError
    from mlsmith.registry.store import connect, resolve_tracking_uri, resolve_version

    rest = reference[len(REGISTRY_PREFIX) :]
    if "@" in rest:
        name, ref = rest.split("@", 1)
    elif "/" in rest:
        name, ref = rest.split("/", 1)
    else:
        raise ConfigError(
            f"{reference}: name a version, as models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    client = connect(resolve_tracking_uri(tracking_uri))
    return str(resolve_version(client, name, ref).version)


class ModelSlot:
    """A served name's current version, swapped whole when its registry alias moves."""

    def __init__(self, name: str, reference: str, tracking_uri: str | None = None) -> None:
        self.name = name
        self.reference = reference
        self.tracking_uri = tracking_uri
        self.current = load(reference, tracking_uri)
        self.signature = signature(self.current.package)
        self._lock = threading.Lock()

    @property
    def follows_alias(self) -> bool:
        return self.reference.startswith(REGISTRY_PREFIX) and "@" in self.reference

    def refresh(self) -> bool:
        """Load the version the alias names now, if it moved; True when a swap happened.

        The new version must read the same inputs: a client sending today's columns must not
        start failing because of a promotion.
        """
        if not self.follows_alias:
            return False
        with self._lock:
            version = registry_version(self.reference, self.tracking_uri)
            if version == self.current.version:
                return False
            loaded = load(self.reference, self.tracking_uri)
            new_signature = signature(loaded.package)
            if [s.name for s in new_signature] != [s.name for s in self.signature]:
                log.error(
                    "%s: version %s reads other inputs (%s) than version %s; not swapped",
                    self.name,
                    loaded.version,
                    ", ".join(s.name for s in new_signature),
                    self.current.version,
                )
                return False
            previous, self.current = self.current.version, loaded
            log.info("%s: now serving version %s (was %s)", self.name, loaded.version, previous)
            return True


def signature(package: Package) -> list[InputSpec]:
    """The raw inputs a package reads, typed as v2 datatypes."""
    inner = package.encoder.inner
    if package.kind == "tabular":
        numeric = [InputSpec(c, "FP64", (*NUMERIC, BYTES), "numeric") for c in inner.numeric]  # type: ignore[union-attr]
        categorical = [
            InputSpec(c, BYTES, (BYTES, "BOOL", *NUMERIC), "categorical")
            for c in inner.categorical  # type: ignore[union-attr]
        ]
        return numeric + categorical
    if package.kind == "text":
        return [InputSpec(package.columns[0], BYTES, (BYTES,), "text")]
    return [InputSpec(package.columns[0], BYTES, (BYTES,), "image")]


def rows_from_tensors(
    tensors: list[Tensor], inputs: list[InputSpec], *, extra: tuple[str, ...] = ()
) -> Rows:
    """The raw rows a request's tensors hold, checked against the model's inputs.

    ``extra`` names inputs that are not the model's but may be sent (a sticky routing key).
    """

    specs = {s.name: s for s in inputs}
    given = {t.name: t for t in tensors}
    missing = [s.name for s in inputs if s.name not in given]
    unknown = [n for n in given if n not in specs and n not in extra]
    if unknown:
        name = unknown[0]
        raise ProtocolError(
            f"unknown input '{name}'{did_you_mean(name, list(specs))}; this model reads: "
            f"{', '.join(specs)}"
        )
    if missing:
        raise ProtocolError(
            f"missing input(s): {', '.join(missing)}; this model reads: {', '.join(specs)}"
        )
    rows: int | None = None
    columns: dict[str, Any] = {}
    for spec in inputs:
        tensor = given[spec.name]
        where = f"input '{spec.name}'"
        if len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise ProtocolError(
                f"{where}: shape must be [rows] or [rows, 1] (one value per row); found "
                f"{tensor.shape}"
            )
        if tensor.datatype not in spec.accepts:
            raise ProtocolError(
                f"{where}: datatype {tensor.datatype} is not accepted for a {spec.role} input; "
                f"send {' or '.join(_shown(spec.accepts))}"
            )
        if rows is None:
            rows = tensor.shape[0]
        elif tensor.shape[0] != rows:
            raise ProtocolError(
                f"{where}: {tensor.shape[0]} rows, but the other inputs have {rows}; every input "
                "needs one value per row"
            )
        columns[spec.name] = _column(tensor, spec, where)
    if not rows:
        raise ProtocolError("the request holds no rows (shape [0])")
    return Rows(columns, rows)


def _shown(accepts: tuple[str, ...]) -> list[str]:
    if set(NUMERIC) <= set(accepts):
        rest = [a for a in accepts if a not in NUMERIC]
        return ["a number type (FP32, FP64, INT64...)", *rest]
    return list(accepts)


def _column(tensor: Tensor, spec: InputSpec, where: str) -> Any:
    data = tensor.data
    if spec.role == "image":
        return [image_bytes(v, where) for v in data]
    if tensor.datatype == BYTES:
        try:
            texts = [v.decode() if isinstance(v, bytes) else v for v in data]
        except UnicodeDecodeError:
            raise ProtocolError(f"{where}: BYTES values must be UTF-8 text") from None
        if spec.role == "numeric":
            return _parse_numbers(texts, where)
        return np.asarray(texts, dtype=object)
    if spec.role == "numeric":
        return data.astype(np.float64)
    # Numbers sent for a category: the category's text, as a CSV reader would have read it.
    return data


def _parse_numbers(texts: list[str], where: str) -> np.ndarray:
    out = np.empty(len(texts), dtype=np.float64)
    for i, text in enumerate(texts):
        stripped = text.strip()
        try:
            out[i] = float(stripped) if stripped else np.nan
        except ValueError:
            raise ProtocolError(f"{where}: row {i}: expected a number; found {text!r}") from None
    return out


def image_bytes(value: Any, where: str) -> bytes:
    """Binary BYTES are the file's bytes; JSON strings carry them base64-encoded."""
    if isinstance(value, bytes):
        return value
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(
            f"{where}: an image sent as JSON must be the file's bytes base64-encoded (or use "
            "the binary tensor extension)"
        ) from None


def output_tensors(package: Package, answer: Answer) -> list[Tensor]:
    """``prediction`` per row, and for classification ``probabilities`` (rows x classes); a
    ranking's ``score`` and ``rank`` (1 = best), the request's rows ranked as one query's."""
    from mlsmith.runtime.outputs import ranks_within

    classes = package.classes
    n = len(answer)
    if package.decoder.kind == "ranking":
        scores = answer.labels.astype(np.float64)
        return [
            Tensor("score", "FP64", [n], scores),
            Tensor("rank", "INT64", [n], ranks_within(scores)),
        ]
    if answer.proba is None:
        return [Tensor("prediction", "FP64", [n], answer.labels.astype(np.float64))]
    label_type, label_values = _label_tensor(classes, answer.labels)
    return [
        Tensor("prediction", label_type, [n], label_values),
        Tensor(
            "probabilities",
            "FP64",
            [n, len(classes)],
            np.ascontiguousarray(answer.proba).ravel(),
            {"classes": [_plain(c) for c in classes]},
        ),
    ]


def output_specs(package: Package) -> list[dict[str, Any]]:
    """The outputs as the v2 model metadata lists them."""
    classes = package.classes
    if package.decoder.kind == "ranking":
        return [
            {"name": "score", "datatype": "FP64", "shape": [-1]},
            {"name": "rank", "datatype": "INT64", "shape": [-1]},
        ]
    if not classes:
        return [{"name": "prediction", "datatype": "FP64", "shape": [-1]}]
    label_type, _ = _label_tensor(classes, np.asarray(classes[:1], dtype=object))
    return [
        {"name": "prediction", "datatype": label_type, "shape": [-1]},
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, len(classes)]},
    ]


def _label_tensor(classes: list[Any], labels: np.ndarray) -> tuple[str, np.ndarray]:
    if all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in classes):
        return "INT64", labels.astype(np.int64)
    if all(isinstance(c, (float, np.floating)) for c in classes):
        return "FP64", labels.astype(np.float64)
    values = np.empty(len(labels), dtype=object)
    values[:] = [str(v) for v in labels]
    return BYTES, values


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def rows_from_json(rows: Any, inputs: list[InputSpec], *, extra: tuple[str, ...] = ()) -> Rows:
    """The raw rows of a plain JSON request (``{"rows": [{column: value}, ...]}``), checked."""
    import pandas as pd

    if not isinstance(rows, list) or not rows:
        raise ProtocolError("'rows' must be a non-empty list of objects, one per row")
    names = [s.name for s in inputs]
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ProtocolError(f"rows[{i}] must be an object of column: value")
        unknown = [k for k in row if k not in names and k not in extra]
        if unknown:
            column = check_text(unknown[0], f"rows[{i}]: a column name")
            raise ProtocolError(
                f"rows[{i}]: unknown column '{column}'{did_you_mean(column, names)}; "
                f"this model reads: {', '.join(names)}"
            )
        missing = [n for n in names if n not in row]
        if missing:
            raise ProtocolError(
                f"rows[{i}]: missing column(s) {', '.join(missing)} (send null for a missing "
                "value of a table column)"
            )
    columns: dict[str, Any] = {}
    for spec in inputs:
        values = [row[spec.name] for row in rows]
        where = f"column '{spec.name}'"
        for i, value in enumerate(values):
            if isinstance(value, (dict, list)):
                raise ProtocolError(f"rows[{i}]: {where} must hold a single value")
            if isinstance(value, str):
                check_text(value, f"rows[{i}]: {where}")
        if spec.role == "image":
            columns[spec.name] = [
                image_bytes(v, f"rows[{i}]: {where}") for i, v in enumerate(values)
            ]
        elif spec.role == "numeric":
            out = np.empty(len(values), dtype=np.float64)
            for i, value in enumerate(values):
                if value is None:
                    out[i] = np.nan
                elif isinstance(value, bool) or not isinstance(value, (int, float, str)):
                    raise ProtocolError(f"rows[{i}]: {where} must be a number; found {value!r}")
                elif isinstance(value, str):
                    out[i] = _parse_numbers([value], f"rows[{i}]: {where}")[0]
                else:
                    try:
                        out[i] = float(value)
                    except OverflowError:  # an integer past float64: infinite, as "1e999" is
                        out[i] = np.inf if value > 0 else -np.inf
            columns[spec.name] = out
        elif spec.role == "text":
            bad = next((v for v in values if not isinstance(v, str)), None)
            if bad is not None or any(v is None for v in values):
                raise ProtocolError(f"{where}: text must be a string; found {bad!r}")
            columns[spec.name] = np.asarray(values, dtype=object)
        else:
            # Numbers for a category become its text as a CSV reader would have typed it (3,
            # not 3.0): inferred from the values, as pandas does reading a file.
            columns[spec.name] = pd.Series(values, dtype=object).infer_objects().to_numpy()
    return Rows(columns, len(rows))


def default_name(reference: str) -> str:
    """The served name of a reference given without ``name=``: the registered model's name, or
    the run's experiment, or the folder's name."""
    if reference.startswith(REGISTRY_PREFIX):
        return reference[len(REGISTRY_PREFIX) :].split("@")[0].split("/")[0]
    path = Path(reference).resolve()
    for run in (path, path.parent):
        config = run / "config.yaml"
        if config.is_file():
            import yaml

            try:
                experiment = (yaml.safe_load(config.read_text()) or {}).get("experiment")
            except (OSError, yaml.YAMLError, AttributeError):
                experiment = None
            if isinstance(experiment, str) and experiment:
                return experiment
    return path.name
