"""Two versions of a registered model scored on the same labelled rows, and the paired interval
of the difference.

The rows are ``--data`` or the candidate run's test split, rebuilt from its config with its saved
preprocessing (as ``mlsmith export`` does), minus every row either version trained or validated
on: rows are matched by a hash of their raw values, so a row that appears in another file still
counts as seen. Both versions predict through their packages, as they would be served.

The interval is a paired percentile bootstrap: each resample draws the same rows for both
versions, so what they share (hard rows, easy rows) cancels out, and the interval of the
difference is much narrower than two separate intervals would suggest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.errors import ConfigError, DataError, MlsmithError, RunError, did_you_mean
from mlsmith.evaluation import paired_difference
from mlsmith.files import read_json
from mlsmith.registry.store import download, first_line, mlflow_errors
from mlsmith.run import CONFIG_FILE, Run
from mlsmith.runtime.package import PREPROCESSING_FILE, Package

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from mlsmith.data.base import PreparedData, Preprocessor

log = logging.getLogger(__name__)

# Fewer held-out rows than this and the 95% interval of an accuracy difference is several points
# wide: the gate would let almost anything through.
MIN_ROWS = 200
RESAMPLES = 1000
CONFIDENCE = 0.95
# Metrics where smaller is better: their difference is negated, so positive always means "the
# candidate is better".
LOWER_IS_BETTER = frozenset({"log_loss", "mse", "rmse", "mae", "mape"})


@dataclass
class Contender:
    """A version downloaded for scoring: its package, preprocessing, inputs and run."""

    version: str
    package: Package
    state: dict[str, Any]  # preprocessing.json
    inputs: list[str]  # the signature's input columns
    run: Run | None  # the run directory it came from, when it is on this machine
    run_hint: str  # where that run directory is, for messages


@dataclass(frozen=True)
class Figures:
    """The comparison: each version's metric, the signed difference, its interval, the rows."""

    metric: str
    candidate: float
    incumbent: float
    difference: float  # positive: the candidate is better
    ci95: tuple[float, float]
    rows: int
    rows_excluded: int
    source: str


def load_contender(
    client: MlflowClient, uri: str, name: str, version: ModelVersion, destination: Path
) -> Contender:
    """Download a version's package and find the run it was trained in."""
    import mlflow.models

    try:
        local = download(f"models:/{name}/{version.version}", uri, destination)
        package = Package(local, providers=["CPUExecutionProvider"])
    except MlsmithError:
        raise
    except Exception as exc:  # a missing artifact, an unreadable package
        raise RunError(
            f"'{name}' version {version.version} cannot be downloaded ({first_line(exc)})"
        ) from None
    signature = mlflow.models.Model.load(str(local)).signature
    inputs = list(signature.inputs.input_names()) if signature is not None else []
    run_dir = version.tags.get("mlsmith.run_dir")
    if not run_dir and version.run_id:
        with mlflow_errors(f"the MLflow run of '{name}' version {version.version}"):
            run_dir = client.get_run(version.run_id).data.tags.get("mlsmith.run_dir")
    run = Run(run_dir) if run_dir and (Path(run_dir) / CONFIG_FILE).is_file() else None
    return Contender(
        version=str(version.version),
        package=package,
        state=read_json(package.directory / PREPROCESSING_FILE),
        inputs=inputs,
        run=run,
        run_hint=run_dir or "not recorded",
    )


def compare(
    candidate: Contender,
    incumbent: Contender,
    *,
    data: str | Path | None = None,
    metric: str | None = None,
) -> Figures:
    """Score both versions on the same held-out rows (see the module docstring).

    ``metric`` defaults to the task's headline (accuracy, rmse). Fewer than :data:`MIN_ROWS`
    rows is a DataError asking for ``--data``.
    """
    from mlsmith.reports.facts import HEADLINE_METRICS
    from mlsmith.tasks import task_from_dict

    task = task_from_dict(candidate.state["task"])
    other = incumbent.state["task"]["kind"]
    if task.kind != other:
        raise RunError(
            f"version {candidate.version} is {task.kind}, version {incumbent.version} is "
            f"{other}: they cannot be compared"
        )
    names = task.metric_names
    chosen = metric or next(m for m in HEADLINE_METRICS if m in names)
    if chosen not in names:
        raise ConfigError(
            f"--metric: '{chosen}' is not a {task.kind} metric{did_you_mean(chosen, names)}; "
            f"choose from {', '.join(names)}"
        )
    frame, source, excluded = scoring_rows(candidate, incumbent, data)
    truth = task.truth(task.encode(frame[candidate.state["target"]]))
    classes = candidate.package.classes
    new, old, difference, low, high = paired_difference(
        task.kind,
        truth,
        _outputs(candidate, frame, source, classes),
        _outputs(incumbent, frame, source, classes),
        chosen,
        # Each version decides labels with its own threshold, as it does when served.
        thresholds=(candidate.package.decoder.threshold, incumbent.package.decoder.threshold),
    )
    if not np.isfinite([difference, low, high]).all():
        raise DataError(
            f"{chosen} is undefined on the {len(frame)} rows of {source}; choose another --metric"
        )
    if chosen in LOWER_IS_BETTER:
        difference, low, high = -difference, -high, -low
    return Figures(chosen, new, old, difference, (low, high), len(frame), excluded, source)


def scoring_rows(
    candidate: Contender, incumbent: Contender, data: str | Path | None
) -> tuple[pd.DataFrame, str, int]:
    """Labelled rows to score on, where they came from, and how many were left out because
    one of the two versions trained or validated on them."""
    target = candidate.state["target"]
    seen: list[pd.DataFrame] = []
    if data is not None:
        frame, source = _reader(candidate).read(str(data)), str(data)
        others = [candidate, incumbent]
    else:
        if candidate.run is None:
            raise DataError(
                f"the run of version {candidate.version} ({candidate.run_hint}) is not on this "
                "machine, so its test split cannot be rebuilt; pass --data FILE with labelled "
                "rows neither version trained on"
            )
        prepared = _prepare(candidate.run, strict=True)
        frame = prepared.frames.get("test")
        if frame is None or not len(frame):
            raise DataError(
                f"run {candidate.run.id} has no test split; pass --data FILE with labelled rows"
            )
        source = f"the test split of run {candidate.run.id}"
        seen += [prepared.frames[s] for s in ("train", "val") if s in prepared.frames]
        others = [incumbent]
    for contender in others:
        seen += _trained_on(contender)
    if target not in frame.columns:
        raise DataError(f"{source}: no target column '{target}' to score against")
    frame = frame.loc[frame[target].notna()]
    columns = [*candidate.package.columns, target]
    hashes = [_row_hashes(f, columns) for f in seen if set(columns) <= set(f.columns)]
    excluded = 0
    if hashes:
        keep = ~np.isin(_row_hashes(frame, columns), np.concatenate(hashes))
        excluded = int((~keep).sum())
        frame = frame.loc[keep]
    if len(frame) < MIN_ROWS:
        raise DataError(
            f"only {len(frame)} labelled rows to compare on ({source}; {excluded} left out "
            f"because a version trained or validated on them); at least {MIN_ROWS} are needed "
            "for the interval to mean anything: pass --data FILE with more labelled rows"
        )
    return frame.reset_index(drop=True), source, excluded


def _outputs(
    contender: Contender, frame: pd.DataFrame, source: str, classes: list[Any]
) -> np.ndarray:
    """Probabilities (n, C) in the order of ``classes``, or predicted values (n,)."""
    package = contender.package
    decoded = package.decoder.decode(package.raw(frame[package.columns], source))
    if not classes:
        return decoded
    own = [str(c) for c in package.classes]
    if sorted(own) != sorted(str(c) for c in classes):
        raise RunError(
            f"version {contender.version} predicts the classes {', '.join(own)}, not "
            f"{', '.join(map(str, classes))}: the versions cannot be compared"
        )
    return decoded[:, [own.index(str(c)) for c in classes]]


def _trained_on(contender: Contender) -> list[pd.DataFrame]:
    """The raw rows a version trained and validated on, rebuilt from its run."""
    if contender.run is None:
        log.warning(
            "the run of version %s (%s) is not on this machine: rows it trained on cannot be "
            "left out of the comparison",
            contender.version,
            contender.run_hint,
        )
        return []
    try:
        prepared = _prepare(contender.run, strict=False)
    except MlsmithError as error:
        log.warning("rows version %s trained on are unknown (%s)", contender.version, error)
        return []
    return [prepared.frames[s] for s in ("train", "val") if s in prepared.frames]


def _prepare(run: Run, *, strict: bool) -> PreparedData:
    """The run's splits, rebuilt from its config with its saved preprocessing.

    They are the run's own only if its data did not change: ``strict`` makes a change an error,
    else a warning and no rows (which rows it trained on is then unknown).
    """
    from mlsmith import families

    prepared: PreparedData = families.data_kind(run.config.data.type).prepare(
        run.config, preprocessor=run.preprocessor
    )
    recorded = run.info.get("data_fingerprint")
    if recorded and prepared.fingerprint != recorded:
        message = (
            f"the data of run {run.id} ({run.config.data.path}) changed since it was trained "
            f"(fingerprint {prepared.fingerprint}, recorded {recorded})"
        )
        if strict:
            raise DataError(f"{message}; pass --data FILE with labelled rows to compare on")
        log.warning("%s: rows it trained on cannot be left out", message)
        return replace(prepared, frames={})
    return prepared


def _reader(contender: Contender) -> Preprocessor:
    """Something that reads a user's file as the version's data kind does."""
    from mlsmith import families

    if contender.run is not None:
        return contender.run.preprocessor
    module = families.data_kind(contender.state["kind"])
    preprocessor: Preprocessor = module.load_preprocessor(contender.package.directory)
    return preprocessor


def _row_hashes(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """One hash per row of its raw values, equal for equal rows whichever file they came from
    (numbers compared as floats, everything else as text)."""
    import pandas as pd

    def normalised(column: pd.Series) -> pd.Series:
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            return column.astype("float64")
        return column.astype(str)

    values = pd.DataFrame({c: normalised(frame[c]) for c in columns})
    return pd.util.hash_pandas_object(values, index=False).to_numpy()
