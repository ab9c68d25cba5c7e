"""Drift against the training data: the reference statistics a package carries, and PSI.

A package's ``reference.json`` summarises the training split as histograms: each numeric
feature in 10 bins cut at the training deciles (plus a bin for missing values) with a sample of
its training values for a KS test; each categorical feature as its most frequent categories
(plus ``__other__`` for the rest); a text column as its length in characters; and the model's
predictions on those rows (class shares, or regression values binned like a numeric feature).

:class:`DriftWindow` keeps the bin of every feature of the most recent rows a server answered
in a ring buffer with running counts, so an update costs O(rows in the batch) and the PSI of
every feature is a vectorised read. ``mlsmith monitor`` bins a prediction log with the same
:meth:`Reference.feature_bins`, so the server's gauges and the monitor's report agree.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DataError
from .frames import mark_missing
from .tabular import category_keys

if TYPE_CHECKING:
    import pandas as pd

REFERENCE_FILE = "reference.json"
REFERENCE_VERSION = 1
# Deciles: the usual PSI binning, fine enough to see a shift, coarse enough for a few hundred rows.
NUMERIC_BINS = 10
MAX_CATEGORIES = 50
SAMPLE_SIZE = 2_000
SAMPLE_BUDGET = 200_000  # sampled values over all numeric features
OTHER = "__other__"
MISSING_BIN = "missing"
# Added to every share before the logarithm: an empty bin on one side gives a large, finite PSI.
EPSILON = 1e-4
NUMERIC, CATEGORICAL = "numeric", "categorical"
LENGTH = "length"  # a text column read as its length in characters
PREDICTION = "prediction"


@dataclass
class FeatureStats:
    """One feature's training histogram: its bins, the training rows per bin, and for numeric
    features a sample of the training values (what a KS test compares with)."""

    name: str
    column: str
    type: str  # NUMERIC or CATEGORICAL
    counts: np.ndarray
    edges: list[float] = field(default_factory=list)  # numeric: inner edges, ascending
    categories: list[str] = field(default_factory=list)  # categorical: the top categories
    sample: np.ndarray | None = None
    transform: str | None = None  # LENGTH: the column's text length is the numeric value

    @property
    def n_bins(self) -> int:
        """Numeric: len(edges) + 1 value bins and the missing bin; categorical: categories and
        the ``__other__`` bin."""
        return len(self.edges) + 2 if self.type == NUMERIC else len(self.categories) + 1

    @property
    def shares(self) -> np.ndarray:
        total = self.counts.sum()
        return self.counts / total if total else np.zeros(self.n_bins)

    @property
    def labels(self) -> list[str]:
        """A name per bin, for reports."""
        if self.type == CATEGORICAL:
            return [*self.categories, OTHER]
        if not self.edges:
            return ["all values", MISSING_BIN]
        edges = [f"{e:.4g}" for e in self.edges]
        inner = [f"[{a}, {b})" for a, b in itertools.pairwise(edges)]
        return [f"< {edges[0]}", *inner, f">= {edges[-1]}", MISSING_BIN]

    def values(self, column: pd.Series | np.ndarray) -> np.ndarray:
        """A numeric feature's values as float64, NaN where missing or not a number."""
        import pandas as pd

        if isinstance(column, np.ndarray):
            if column.dtype.kind in "fiu" and self.transform is None:
                # A served request's column: already numbers, no pandas round trip.
                values = column.astype(np.float64, copy=False)
                return np.where(np.isinf(values), np.nan, values)
            column = pd.Series(column)
        if self.transform == LENGTH:
            return column.astype("string").str.len().to_numpy(dtype=np.float64, na_value=np.nan)
        if column.dtype.kind in "fiub":  # already numbers: no to_numeric round trip
            values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            values = pd.to_numeric(column, errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
        # An infinite value is not a usable number: the package refuses it; count it missing.
        return np.where(np.isinf(values), np.nan, values)

    def bins(self, column: pd.Series | np.ndarray) -> np.ndarray:
        """The bin of every value, int64 in [0, n_bins)."""
        if self.type == CATEGORICAL:
            if isinstance(column, np.ndarray):
                import pandas as pd

                column = pd.Series(column)
            # A dict lookup: at most 51 keys, and far cheaper than pandas for a request's rows.
            other = len(self.categories)
            lookup = {key: i for i, key in enumerate(self.categories)}
            keys = category_keys(column)
            return np.fromiter((lookup.get(k, other) for k in keys), np.int64, count=len(keys))
        values = self.values(column)
        found = np.searchsorted(np.asarray(self.edges, dtype=np.float64), values, side="right")
        return np.where(np.isnan(values), len(self.edges) + 1, found).astype(np.int64)

    @classmethod
    def fit(
        cls,
        name: str,
        column: pd.Series,
        type: str,
        *,
        transform: str | None = None,
        sample_size: int = SAMPLE_SIZE,
    ) -> FeatureStats:
        """The histogram of ``column`` (training rows), binned as described in the module."""
        if type == CATEGORICAL:
            import pandas as pd

            keys = pd.Series(category_keys(column), dtype=object)
            # Most frequent first; ties by name, so the same data always gives the same bins.
            frequencies = keys.value_counts()
            order = sorted(frequencies.items(), key=lambda item: (-item[1], str(item[0])))
            categories = [str(key) for key, _ in order[:MAX_CATEGORIES]]
            stats = cls(name, str(column.name), CATEGORICAL, np.zeros(0), categories=categories)
        else:
            stats = cls(name, str(column.name), NUMERIC, np.zeros(0), transform=transform)
            values = stats.values(column)
            present = values[~np.isnan(values)]
            if len(present):
                quantiles = np.linspace(0.0, 1.0, NUMERIC_BINS + 1)[1:-1]
                stats.edges = [float(e) for e in np.unique(np.quantile(present, quantiles))]
                rng = np.random.default_rng(0)
                take = min(sample_size, len(present))
                stats.sample = np.sort(rng.choice(present, size=take, replace=False))
            else:
                stats.sample = np.zeros(0)
        stats.counts = np.bincount(stats.bins(column), minlength=stats.n_bins).astype(np.int64)
        return stats

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "column": self.column,
            "type": self.type,
            "counts": [int(c) for c in self.counts],
        }
        if self.type == NUMERIC:
            out["edges"] = self.edges
            # float32 precision is plenty for a KS test and halves the file.
            sample = [] if self.sample is None else self.sample.astype(np.float32).tolist()
            out["sample"] = [float(f"{v:.7g}") for v in sample]
        else:
            out["categories"] = self.categories
        if self.transform:
            out["transform"] = self.transform
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureStats:
        sample = data.get("sample")
        stats = cls(
            name=str(data["name"]),
            column=str(data["column"]),
            type=str(data["type"]),
            counts=np.asarray(data["counts"], dtype=np.int64),
            edges=[float(e) for e in data.get("edges", [])],
            categories=[str(c) for c in data.get("categories", [])],
            sample=None if sample is None else np.asarray(sample, dtype=np.float64),
            transform=data.get("transform"),
        )
        if stats.type not in (NUMERIC, CATEGORICAL) or len(stats.counts) != stats.n_bins:
            raise ValueError(f"feature '{stats.name}': inconsistent bins")
        return stats


@dataclass
class Reference:
    """The training split's statistics a package carries (``reference.json``)."""

    kind: str
    rows: int
    features: list[FeatureStats]
    prediction: FeatureStats | None
    na_values: list[str] = field(default_factory=list)
    # The package's held-out metrics ({"split": "test", "metrics": {...}}), for live performance.
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        """The input columns the features are read from."""
        return list(dict.fromkeys(f.column for f in self.features))

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        predictions: pd.DataFrame | None,
        *,
        kind: str = "tabular",
        numeric: Sequence[str] = (),
        categorical: Sequence[str] = (),
        text: Sequence[str] = (),
        classes: Sequence[Any] = (),
        na_values: Sequence[str] = (),
        metrics: Mapping[str, Any] | None = None,
    ) -> Reference:
        """The statistics of raw training rows ``frame`` and the model's ``predictions`` on
        them (``prediction`` column; class labels when ``classes`` is given, else values)."""
        if na_values:
            frame = mark_missing(frame[[*numeric, *categorical, *text]], list(na_values))
        # KS samples of wide tables shrink so reference.json stays around a few megabytes.
        size = max(200, min(SAMPLE_SIZE, SAMPLE_BUDGET // max(1, len(numeric) + len(text))))
        features = [FeatureStats.fit(c, frame[c], NUMERIC, sample_size=size) for c in numeric]
        features += [FeatureStats.fit(c, frame[c], CATEGORICAL) for c in categorical]
        features += [
            FeatureStats.fit(
                f"{c} ({LENGTH})", frame[c], NUMERIC, transform=LENGTH, sample_size=size
            )
            for c in text
        ]
        prediction = None
        if predictions is not None and PREDICTION in predictions.columns:
            column = predictions[PREDICTION]
            if classes:
                prediction = FeatureStats.fit(PREDICTION, column, CATEGORICAL)
                # Every class gets a bin, predicted in training or not, in the decoder's order.
                keys = [str(k) for k in category_keys(_series(list(classes)))]
                prediction.categories = keys
                prediction.counts = np.bincount(prediction.bins(column), minlength=len(keys) + 1)
            else:
                prediction = FeatureStats.fit(PREDICTION, column, NUMERIC)
        return cls(
            kind=kind,
            rows=len(frame),
            features=features,
            prediction=prediction,
            na_values=list(na_values),
            metrics=dict(metrics or {}),
        )

    def feature_bins(
        self, frame: pd.DataFrame | Mapping[str, np.ndarray], source: str = "input"
    ) -> np.ndarray:
        """The bin of every feature of every row, int64 (n, n_features); a DataError names a
        feature column ``frame`` lacks.

        ``frame`` may also be numpy columns by name (a served request's rows): numeric
        columns are binned without pandas, a tenth of the cost for a few rows.
        """
        import pandas as pd

        if not isinstance(frame, pd.DataFrame) and self.na_values:
            frame = pd.DataFrame(dict(frame))  # na_values are marked on a frame
        names = frame.columns if isinstance(frame, pd.DataFrame) else frame
        missing = [c for c in self.columns if c not in names]
        if missing:
            raise DataError(
                f"{source}: feature column '{missing[0]}' not found; the reference statistics "
                f"describe {', '.join(self.columns)}"
            )
        if self.na_values:
            assert isinstance(frame, pd.DataFrame)
            frame = mark_missing(frame[self.columns], self.na_values)
        if isinstance(frame, pd.DataFrame):
            n = len(frame)
        else:
            n = len(next(iter(frame.values()))) if frame else 0
        out = np.empty((n, len(self.features)), dtype=np.int64)
        for j, feature in enumerate(self.features):
            out[:, j] = feature.bins(frame[feature.column])
        return out

    def prediction_bins(self, predictions: pd.DataFrame | np.ndarray) -> np.ndarray:
        """The bin of every row's ``prediction`` (the output table, or the predictions as an
        array), int64 (n,)."""
        if self.prediction is None:
            return np.zeros(len(predictions), dtype=np.int64)
        column = predictions if isinstance(predictions, np.ndarray) else predictions[PREDICTION]
        return self.prediction.bins(column)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": REFERENCE_VERSION,
            "kind": self.kind,
            "rows": self.rows,
            "na_values": self.na_values,
            "features": [f.to_dict() for f in self.features],
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
            "metrics": self.metrics,
        }

    def to_json(self) -> str:
        # Strict JSON: metrics hold null, never NaN, and bins hold finite numbers.
        return json.dumps(self.to_dict(), allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reference:
        if int(data.get("format_version", 0)) > REFERENCE_VERSION:
            raise ValueError(
                f"reference format {data['format_version']} is newer than this runtime reads "
                f"({REFERENCE_VERSION}); upgrade mlsmith"
            )
        prediction = data.get("prediction")
        return cls(
            kind=str(data["kind"]),
            rows=int(data["rows"]),
            features=[FeatureStats.from_dict(f) for f in data["features"]],
            prediction=None if prediction is None else FeatureStats.from_dict(prediction),
            na_values=[str(v) for v in data.get("na_values", [])],
            metrics=dict(data.get("metrics") or {}),
        )

    @classmethod
    def from_json(cls, text: str) -> Reference:
        return cls.from_dict(json.loads(text))


def psi(expected_shares: Any, actual_shares: Any, epsilon: float = EPSILON) -> Any:
    """Population stability index: sum over bins of (actual - expected) * ln(actual / expected).

    Shares are floored at ``epsilon``, so an empty bin on either side gives a large but finite
    value. 1-D inputs give a float; 2-D inputs (one row per feature) an array of one PSI per
    row. Usual reading: below 0.1 stable, 0.1-0.2 a moderate shift, above 0.2 a real one.
    """
    expected = np.clip(np.asarray(expected_shares, dtype=np.float64), epsilon, None)
    actual = np.clip(np.asarray(actual_shares, dtype=np.float64), epsilon, None)
    # Where both sides are empty both are floored to epsilon and the term is exactly 0.
    values = np.sum((actual - expected) * np.log(actual / expected), axis=-1)
    return float(values) if np.ndim(values) == 0 else values


class DriftWindow:
    """PSI of every feature and of the predictions over the most recent ``window`` rows.

    Thread-safe: :meth:`update` may be called from concurrent request handlers while a metrics
    endpoint reads :meth:`psi_by_feature`. Binning runs outside the lock; only the counts are
    updated under it.
    """

    def __init__(self, reference: Reference, window: int = 1000) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.reference = reference
        self.window = window
        # The prediction is one more "feature": the last column of the ring buffer.
        stats = [*reference.features, *([reference.prediction] if reference.prediction else [])]
        self._names = [f.name for f in reference.features]
        sizes = np.array([s.n_bins for s in stats], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        total = int(sizes.sum())
        width = int(sizes.max(initial=1))
        # Where each global bin lands in a (features, widest) matrix, to read shares at once.
        self._padded_at = np.zeros(0, dtype=np.int64)
        for i, n in enumerate(sizes.tolist()):
            self._padded_at = np.concatenate([self._padded_at, i * width + np.arange(n)])
        self._shape = (len(stats), width)
        self._expected = self._padded(
            np.concatenate([s.shares for s in stats]) if stats else np.zeros(0)
        )
        self._has_prediction = reference.prediction is not None
        self._ring = np.zeros((window, len(stats)), dtype=np.int64)
        self._counts = np.zeros(total, dtype=np.int64)
        self._filled = 0
        self._next = 0
        self._lock = threading.Lock()

    @property
    def rows(self) -> int:
        """Rows in the window now (at most ``window``)."""
        return self._filled

    def update(
        self,
        frame: pd.DataFrame | Mapping[str, np.ndarray],
        predictions: pd.DataFrame | np.ndarray,
    ) -> None:
        """Add the rows of one answered batch: raw inputs (a frame, or numpy columns by name)
        and the package's output table (or its predictions as an array)."""
        columns = [self.reference.feature_bins(frame)]
        if self._has_prediction:
            columns.append(self.reference.prediction_bins(predictions)[:, None])
        rows = np.concatenate(columns, axis=1) + self._offsets
        n = len(rows)
        if not n:
            return
        with self._lock:
            if n >= self.window:
                rows = rows[-self.window :]
                self._ring[:] = rows
                self._counts[:] = np.bincount(rows.ravel(), minlength=len(self._counts))
                self._filled, self._next = self.window, 0
                return
            positions = (self._next + np.arange(n)) % self.window
            # Until the ring is full, the slots at and after ``_filled`` hold nothing yet.
            evicted = self._ring[positions[positions < self._filled]]
            if len(evicted):
                self._counts -= np.bincount(evicted.ravel(), minlength=len(self._counts))
            self._ring[positions] = rows
            self._counts += np.bincount(rows.ravel(), minlength=len(self._counts))
            self._filled = min(self.window, self._filled + n)
            self._next = (self._next + n) % self.window

    def psi_by_feature(self) -> dict[str, float]:
        """PSI of every feature against training; NaN while the window is empty."""
        values = self._psi()
        return {name: float(values[i]) for i, name in enumerate(self._names)}

    def prediction_psi(self) -> float:
        """PSI of the predictions against the model's on the training rows (NaN: none yet, or a
        reference without predictions)."""
        if not self._has_prediction:
            return float("nan")
        return float(self._psi()[-1])

    def _psi(self) -> np.ndarray:
        with self._lock:
            counts, filled = self._counts.copy(), self._filled
        if not filled:
            return np.full(self._shape[0], np.nan)
        return np.asarray(psi(self._expected, self._padded(counts / filled)))

    def _padded(self, flat: np.ndarray) -> np.ndarray:
        out = np.zeros(self._shape[0] * self._shape[1])
        out[self._padded_at] = flat
        return out.reshape(self._shape)


def _series(values: list[Any]) -> pd.Series:
    import pandas as pd

    return pd.Series(values)
