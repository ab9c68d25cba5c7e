"""Tabular data: read, split, and a preprocessor fitted on the training split only.

Numeric columns are imputed with the training median and standardized; categorical columns are
mapped to indices for embeddings, with index 0 kept for values never seen in training. The
fitted state is plain JSON (no pickles), so a saved run can be loaded safely anywhere.

With ``data.stream`` the table is never read whole: the same preprocessing is fitted in one pass
over its chunks and training reads them again each epoch (:func:`_prepare_streamed`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.columns import numbers_as_text
from mlsmith.config import Config, DataConfig
from mlsmith.data.base import (
    PreparedData,
    Preprocessor,
    Split,
    drop_missing_target,
    warn_missing_classes,
)
from mlsmith.data.splits import split_frames
from mlsmith.data.tables import fingerprint, read_table, table_chunks
from mlsmith.errors import ConfigError, DataError
from mlsmith.runtime.frames import mark_missing, nested_columns, require_columns
from mlsmith.runtime.tabular import TableEncoder, category_keys, numeric_matrix
from mlsmith.tasks import RegressionTask, Task, fit_task, infer_task, label_key

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


class TabularPreprocessor(Preprocessor):
    """Median imputation + standardization for numerics; vocabularies for categoricals."""

    kind = "tabular"

    def __init__(
        self,
        *,
        target: str,
        task: Task,
        numeric: list[str],
        medians: list[float],
        means: list[float],
        stds: list[float],
        categorical: list[str],
        vocabularies: list[list[str]],
        na_values: list[str] | None = None,
        group_column: str | None = None,
    ) -> None:
        super().__init__(target=target, task=task)
        # A ranking task's query id: not a feature, read to rank within each query, and
        # copied into the predictions beside each row's score and rank.
        self.group_column = group_column
        self.output_columns = (group_column,) if group_column else ()
        self.numeric = numeric
        self.medians = np.asarray(medians, dtype=np.float64)
        self.means = np.asarray(means, dtype=np.float64)
        self.stds = np.asarray(stds, dtype=np.float64)
        self.categorical = categorical
        self.vocabularies = vocabularies
        # data.na_values, kept so prediction reads new files' markers as training read them.
        self.na_values = list(na_values or [])
        # The transform itself, shared with every model package (which has no mlsmith).
        self.encoder = TableEncoder(
            numeric=numeric,
            medians=medians,
            means=means,
            stds=stds,
            categorical=categorical,
            vocabularies=vocabularies,
            na_values=self.na_values,
        )

    @classmethod
    def fit(
        cls,
        features: pd.DataFrame,
        *,
        target: str,
        task: Task,
        categorical: list[str],
        na_values: list[str] | None = None,
        group_column: str | None = None,
    ) -> TabularPreprocessor:
        """Learn imputation, scaling and vocabularies from the training rows' features alone."""
        numeric = [c for c in features.columns if c not in categorical]
        values = numeric_matrix(features, numeric, "training split")
        medians = np.zeros(len(numeric))
        means = np.zeros(len(numeric))
        stds = np.ones(len(numeric))
        if numeric:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                # An all-missing column gets median 0: it is then constant and carries nothing.
                # (nanmedian warns "All-NaN slice" through warnings, which errstate leaves on.)
                warnings.simplefilter("ignore", RuntimeWarning)
                medians = np.nan_to_num(np.nanmedian(values, axis=0), nan=0.0)
            filled = np.where(np.isnan(values), medians, values)
            means = filled.mean(axis=0)
            stds = np.where(filled.std(axis=0) > 1e-12, filled.std(axis=0), 1.0)
        return cls(
            target=target,
            task=task,
            numeric=numeric,
            medians=medians.tolist(),
            means=means.tolist(),
            stds=stds.tolist(),
            categorical=categorical,
            vocabularies=[sorted(set(category_keys(features[c]))) for c in categorical],
            na_values=na_values,
            group_column=group_column,
        )

    @property
    def features(self) -> list[str]:
        return self.numeric + self.categorical

    def transform(self, frame: pd.DataFrame, source: str = "input") -> dict[str, np.ndarray]:
        """Raw rows to {'numeric': float32 (n, n_num), 'categorical': int64 (n, n_cat)}."""
        return self.encoder.transform(frame, source)

    def labelled_rows(self, frame: pd.DataFrame, source: str) -> pd.DataFrame:
        # Rows given in memory have not been through the reader that marks na_values missing.
        frame = super().labelled_rows(mark_missing(frame, self.na_values), source)
        require_finite_target(frame, self.target, source)
        return frame

    def query_groups(self, frame: pd.DataFrame, source: str) -> np.ndarray | None:
        if self.group_column is None:
            return None
        return query_ids(frame, self.group_column, source)

    def model_inputs(self) -> dict[str, Any]:
        return {
            "n_numeric": len(self.numeric),
            # +1 for the unknown bucket at index 0.
            "cardinalities": [len(v) + 1 for v in self.vocabularies],
        }

    def fitted_state(self) -> dict[str, Any]:
        return {
            "numeric": self.numeric,
            "medians": self.medians.tolist(),
            "means": self.means.tolist(),
            "stds": self.stds.tolist(),
            "categorical": self.categorical,
            "vocabularies": self.vocabularies,
            "na_values": self.na_values,
            "group_column": self.group_column,
        }


def prepare(config: Config, *, preprocessor: TabularPreprocessor | None = None) -> PreparedData:
    """Read, clean, split and encode the configured table.

    A given ``preprocessor`` (from a run being resumed or evaluated) is used instead of fitting a
    new one; the split is recomputed from the seed and must land on the same rows.
    """
    import pandas as pd

    data = _table_config(config)
    if data.stream:
        return _prepare_streamed(config, preprocessor)
    main = _load(data.path, config, role="data")
    val_file = _load(data.val_path, config, role="validation") if data.val_path else None
    test_file = _load(data.test_path, config, role="test") if data.test_path else None

    labelled = pd.concat(
        [f[data.target] for f in (main, val_file, test_file) if f is not None], ignore_index=True
    )
    kind = infer_task(labelled, data.task, data.path)
    parts = split_frames(
        main,
        val_file,
        test_file,
        data,
        classification=kind in ("binary", "multiclass"),
        seed=config.seed,
    )
    train, val, test = parts.train, parts.val, parts.test
    if data.group_column:
        # Each query's items together: the trees need them so, and a network's validation
        # batches then hold whole lists.
        train, val, test = (_by_query(f, data.group_column) for f in (train, val, test))

    if preprocessor is None:
        task = fit_task(kind, labelled, train[data.target], ks=config.eval.ndcg_at)
        preprocessor = TabularPreprocessor.fit(
            train[_feature_columns(train, config)],
            target=data.target,
            task=task,
            categorical=_categorical_columns(train, config),
            na_values=data.na_values,
            group_column=data.group_column,
        )
    warn_missing_classes(preprocessor.task, {"train": train, "val": val}, data.target)

    def encode(frame: pd.DataFrame, name: str) -> Split:
        return Split(
            preprocessor.transform(frame, name),
            preprocessor.encode_target(frame, name),
            preprocessor.query_groups(frame, name),
        )

    prints = [fingerprint(main)] + [fingerprint(f) for f in (val_file, test_file) if f is not None]
    return PreparedData(
        task=preprocessor.task,
        preprocessor=preprocessor,
        train=encode(train, "training split"),
        val=encode(val, "validation split"),
        test=encode(test, "test split") if len(test) else None,
        fingerprint=prints[0] if len(prints) == 1 else "+".join(prints),
        summary={
            "source": data.path,
            "rows": {"train": len(train), "val": len(val), "test": len(test)},
            "task": preprocessor.task.kind,
            "numeric": preprocessor.numeric,
            "categorical": preprocessor.categorical,
        },
        frames={"train": train, "val": val, "test": test},
    )


def _prepare_streamed(config: Config, preprocessor: TabularPreprocessor | None) -> PreparedData:
    """``prepare`` for ``data.stream``: the file is never read whole.

    One pass over its chunks (:func:`mlsmith.data.streaming.stream_pass`) splits every row by a
    seeded hash of its position, fits the preprocessing from running totals (medians from a
    uniform sample of the training rows) and keeps the validation and test rows; the training
    split is then read again, chunk by chunk, every epoch. Column types come from the first
    chunk: a later chunk with text in a numeric column is a DataError naming its rows.
    """
    from mlsmith.data.stream_batches import StreamedSplit, TableStream
    from mlsmith.data.streaming import MAX_LABELS, SplitRule, stream_pass

    data = _table_config(config)
    chunks = table_chunks(data.path, data.chunk_rows, sep=data.sep, na_values=data.na_values)
    first = next((f for i in range(len(chunks)) for f in chunks.read(i) if len(f)), None)
    if first is None:
        raise DataError(f"{data.path}: the data table is empty (0 rows)")
    first = _usable(first, config, data.path)
    features = _feature_columns(first, config)
    if not features:
        raise DataError(f"{data.path}: no feature columns left besides the target '{data.target}'")
    if data.categorical is None:
        _warn_numbers_as_text(first, features, f"{data.path} (first chunk)")
    if preprocessor is None:
        categorical = _categorical_columns(first, config)
        numeric = [c for c in features if c not in categorical]
    else:
        categorical, numeric = preprocessor.categorical, preprocessor.numeric
    val_file = _load(data.val_path, config, role="validation") if data.val_path else None
    test_file = _load(data.test_path, config, role="test") if data.test_path else None
    rule = SplitRule(
        config.seed,
        val=0.0 if val_file is not None else data.split.val,
        test=0.0 if test_file is not None else data.split.test,
    )
    found = stream_pass(
        chunks,
        rule,
        target=data.target,
        numeric=numeric,
        categorical=categorical,
        clean=lambda frame, source: _usable(frame, config, source, warn=False),
        sample_rows=data.stream_sample_rows,
        eval_rows=data.stream_eval_rows,
    )
    if found.unlabelled:
        log.warning(
            "%s: left out %d of %d rows whose target '%s' is missing",
            data.path,
            found.unlabelled,
            found.rows,
            data.target,
        )
    sample = found.samples["train"]
    val = val_file if val_file is not None else found.samples["val"]
    test = test_file if test_file is not None else found.samples["test"]
    if sample is None or val is None:
        raise DataError(
            f"{data.path}: {found.rows} rows leave {found.train_rows} for training and "
            f"{0 if val is None else len(val)} for validation; both need at least one (add rows "
            "or change data.split)"
        )
    test = sample.iloc[:0] if test is None else test

    if preprocessor is None:
        for extra in (val_file, test_file):
            if extra is not None:
                found.labels.add(extra[data.target])
        labels = found.labels.series(data.target)
        kind = infer_task(labels, data.task, data.path)
        if found.labels.overflow and kind != "regression":
            raise DataError(
                f"{data.path}: target '{data.target}' has more than {MAX_LABELS} distinct "
                "labels, too many classes to classify; set data.task=regression if it is a "
                "quantity"
            )
        if kind == "regression":
            mean, std = found.target.filled(found.train_rows, np.zeros(1))
            task: Task = RegressionTask(float(mean[0]), float(std[0]))
        else:
            task = fit_task(kind, labels, labels, ks=config.eval.ndcg_at)
        # Medians from the sample (exact when it holds every training row); means and
        # deviations (of the imputed columns, as the in-memory fit) and vocabularies from all.
        medians = TabularPreprocessor.fit(
            sample[features], target=data.target, task=task, categorical=categorical
        ).medians
        means, stds = found.numeric.filled(found.train_rows, medians)
        preprocessor = TabularPreprocessor(
            target=data.target,
            task=task,
            numeric=numeric,
            medians=medians.tolist(),
            means=means.tolist(),
            stds=stds.tolist(),
            categorical=categorical,
            vocabularies=[sorted(v) for v in found.vocabularies],
            na_values=data.na_values,
        )
    warn_missing_classes(preprocessor.task, {"train": sample, "val": val}, data.target)

    stream = TableStream(
        chunks=chunks,
        starts=tuple(found.starts),
        train_counts=tuple(found.train_counts),
        rule=rule,
        target=data.target,
        preprocessing=TabularPreprocessor,
        state=preprocessor.to_dict(),
        shuffle_buffer=data.shuffle_buffer,
        num_workers=data.num_workers,
    )
    train = StreamedSplit(
        preprocessor.transform(sample, "training sample"),
        preprocessor.encode_target(sample, "training sample"),
        stream=stream,
    )

    def encode(frame: pd.DataFrame, name: str) -> Split:
        return Split(preprocessor.transform(frame, name), preprocessor.encode_target(frame, name))

    prints = [found.fingerprint] + [fingerprint(f) for f in (val_file, test_file) if f is not None]
    return PreparedData(
        task=preprocessor.task,
        preprocessor=preprocessor,
        train=train,
        val=encode(val, "validation split"),
        test=encode(test, "test split") if len(test) else None,
        fingerprint="+".join(prints),
        summary={
            "source": data.path,
            "rows": {"train": found.train_rows, "val": len(val), "test": len(test)},
            "task": preprocessor.task.kind,
            "numeric": preprocessor.numeric,
            "categorical": preprocessor.categorical,
            "stream": {"chunks": len(chunks), "train_sample": len(sample)},
        },
        frames={"train": sample, "val": val, "test": test},
    )


def refit(preprocessor: TabularPreprocessor, frame: pd.DataFrame) -> TabularPreprocessor:
    """The same preprocessing (columns, classes) with every statistic learnt from ``frame``
    alone: medians, means, standard deviations, vocabularies and a regression target's scale.

    Cross-validation fits one per fold on the fold's training rows, so nothing a fold's model
    sees was computed with its held-out rows. Which columns are numeric or categorical, and the
    class list, stay the run's: they describe the schema, not a statistic of the rows.
    """
    task = preprocessor.task
    if task.kind == "regression":
        task = fit_task("regression", frame[preprocessor.target], frame[preprocessor.target])
    return TabularPreprocessor.fit(
        frame[preprocessor.features],
        target=preprocessor.target,
        task=task,
        categorical=preprocessor.categorical,
        na_values=list(preprocessor.na_values),
        group_column=preprocessor.group_column,
    )


def load_preprocessor(directory: Path) -> TabularPreprocessor:
    """The preprocessor saved in a run directory."""
    return TabularPreprocessor.load(directory)


def load_labelled(path: str, config: Config) -> pd.DataFrame:
    """Read a labelled table for evaluation, applying the config's ``drop`` list."""
    return _load(path, config, role="data")


def _by_query(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """``frame``'s rows grouped by query (queries in order of their ids), stable within one."""
    ids = np.asarray([label_key(v) for v in frame[column].tolist()], dtype=str)
    return frame.iloc[np.argsort(ids, kind="stable")]


def query_ids(frame: pd.DataFrame, column: str, source: str) -> np.ndarray:
    """Each row's query id in ``column``, as text (ids typed differently by two files, 7 and
    "7", are one query); a DataError when the column is absent or an id is missing."""
    require_columns(frame, [column], source, "data.group_column")
    ids = frame[column]
    missing = ids.isna()
    if missing.any():
        raise DataError(
            f"{source}: {int(missing.sum())} rows have no query id in '{column}' (first: row "
            f"{frame.index[int(np.flatnonzero(missing.to_numpy())[0])]}); every item of a ranking "
            "must belong to a query"
        )
    return np.asarray([label_key(v) for v in ids.tolist()], dtype=str)


def require_finite_target(frame: pd.DataFrame, target: str, source: str) -> None:
    """Raise a DataError naming the first row whose target is infinite.

    Rows are ``frame``'s index labels: file rows (from 0) for a table as read.
    """
    import pandas as pd

    column = frame[target]
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return
    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    infinite = np.isinf(values)
    if infinite.any():
        # An infinite target makes the regression's scale infinite: every loss would be NaN.
        first = int(np.flatnonzero(infinite)[0])
        raise DataError(
            f"{source}: target '{target}' holds an infinite value {float(values[first])!r} "
            f"(row {frame.index[first]}); replace it, or empty the cell to drop the row"
        )


def _load(path: str, config: Config, role: str) -> pd.DataFrame:
    data = _table_config(config)
    frame = read_table(path, sep=data.sep, na_values=data.na_values)
    if len(frame) == 0:
        raise DataError(f"{path}: the {role} table is empty (0 rows)")
    require_columns(frame, [data.target], path, "target")
    require_columns(frame, data.drop, path, "data.drop")
    frame = drop_missing_target(frame, data.target, path)
    if len(frame) == 0:
        raise DataError(f"{path}: every row's target '{data.target}' is missing")
    # Split-control columns are not features: group ids and timestamps would leak or overfit.
    aside = _split_columns(config)
    if role == "data":
        require_columns(frame, aside, path, "data.split")
    frame = _usable(frame, config, path)
    if role == "data" and not _feature_columns(frame, config):
        raise DataError(f"{path}: no feature columns left besides the target '{data.target}'")
    if role == "data" and data.categorical is None:
        # Before the index is reset, so the rows named are the file's.
        features = [c for c in frame.columns if c not in {data.target, *aside}]
        _warn_numbers_as_text(frame, features, path)
    return frame.reset_index(drop=True)


def _usable(frame: pd.DataFrame, config: Config, source: str, warn: bool = True) -> pd.DataFrame:
    """``frame`` without the data.drop columns and date/time columns (with a warning), checked:
    no nested values, no infinite target."""
    data = _table_config(config)
    require_columns(frame, [data.target], source, "target")
    require_columns(frame, data.drop, source, "data.drop")
    aside = _split_columns(config)
    unusable = [
        c
        for c in frame.columns
        if c not in aside and str(frame[c].dtype).startswith(("datetime", "timedelta"))
    ]
    if unusable and warn:
        log.warning(
            "%s: ignoring date/time columns %s (derive numeric features from them)",
            source,
            unusable,
        )
    frame = frame[[c for c in frame.columns if c not in set(data.drop) | set(unusable)]]
    _reject_nested(frame, data.target, source)
    require_finite_target(frame, data.target, source)
    return frame


def _reject_nested(frame: pd.DataFrame, target: str, source: str) -> None:
    """Lists, structs and maps (Parquet) cannot be features: name them and the fix."""
    nested = nested_columns(frame)
    if target in nested:
        raise DataError(
            f"{source}: target '{target}' holds {nested[target]} values; a target must hold "
            "numbers or labels"
        )
    if not nested:
        return
    listed = ", ".join(f"'{column}' ({kind})" for column, kind in nested.items())
    if len(nested) == 1:
        what, fix = f"column {listed} holds nested values", "add it to data.drop"
    else:
        what, fix = f"columns {listed} hold nested values", "add them to data.drop"
    raise DataError(f"{source}: {what}, which cannot be features; {fix}")


def _warn_numbers_as_text(frame: pd.DataFrame, columns: list[str], source: str) -> None:
    for column in columns:
        found = numbers_as_text(frame[column])
        if found:
            log.warning(
                "%s: column '%s' looks numeric but is read as text: %s; add those strings to "
                "data.na_values to read them as missing, or list the column in "
                "data.categorical if it is a category",
                source,
                column,
                found.describe(),
            )


def _table_config(config: Config) -> DataConfig:
    if not isinstance(config.data, DataConfig):  # mlsmith.families routes by data.type
        raise TypeError(f"tabular data got a data section of type '{config.data.type}'")
    return config.data


def _split_columns(config: Config) -> list[str]:
    return [c for c in (config.data.split.group, config.data.split.time) if c]


def _feature_columns(frame: pd.DataFrame, config: Config) -> list[str]:
    aside = {config.data.target, *_split_columns(config)}
    return [c for c in frame.columns if c not in aside]


def _categorical_columns(train: pd.DataFrame, config: Config) -> list[str]:
    import pandas as pd

    data = _table_config(config)
    candidates = _feature_columns(train, config)
    if data.categorical is not None:
        require_columns(train, data.categorical, data.path, "data.categorical")
        if data.target in data.categorical:
            raise ConfigError(f"data.categorical: lists the target '{data.target}'")
        chosen = [c for c in candidates if c in data.categorical]
    else:
        chosen = [
            c
            for c in candidates
            if pd.api.types.is_bool_dtype(train[c]) or not pd.api.types.is_numeric_dtype(train[c])
        ]
    for column in chosen:
        distinct = train[column].nunique()
        if distinct > 0.9 * len(train) and len(train) >= 50:
            log.warning(
                "column '%s' has %d distinct values in %d training rows: it looks like an "
                "identifier; add it to data.drop unless it really carries signal",
                column,
                distinct,
                len(train),
            )
    return chosen
