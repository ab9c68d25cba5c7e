"""Leakage between splits: exact duplicate rows, and single features that give the target away.

Thresholds, and why:

* **Duplicates across splits**: a val/test row whose exact copy (features and target) is in
  train is scored on a row the model has seen. Any such row warns; more than
  ``DUPLICATE_FAIL_SHARE`` (5%) of a split fails, because from there the split's metrics are
  visibly inflated. Below that the effect is within the bootstrap interval, and tables with few
  discrete columns legitimately repeat rows. Tables and texts hash their raw feature and target
  values; in-memory images hash their decoded pixels and label; streamed images are skipped.
* **Single-feature leakage** (tables only): a tiny model on one column alone (each category, or
  each of 32 quantile bins of a number, predicts its majority class; 64 bins and their mean
  target, or a straight line, for regression) scoring balanced accuracy >= 0.99 on val
  (R² >= 0.99) almost always means the column is derived from the target. It fails when val has
  at least ``LEAK_MIN_ROWS`` (50) rows; on fewer a perfect score can be chance (the 95% lower
  bound of 50/50 correct is ~0.94), so it warns. At most 5,000 rows of train and of val and the
  first 200 features are used, which keeps it to milliseconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlsmith.checks import CheckResult, Status
from mlsmith.config import Config
from mlsmith.tasks import Task

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.data.base import PreparedData

DUPLICATE_FAIL_SHARE = 0.05
LEAK_SCORE = 0.99
LEAK_MIN_ROWS = 50
LEAK_MAX_ROWS = 5000
LEAK_MAX_COLUMNS = 200
LEAK_BINS = 32
EXAMPLES = 3


def duplicates_across_splits(
    config: Config, data: PreparedData, features: list[str]
) -> CheckResult:
    """Val/test rows whose exact copy (features and target) is in train: leakage."""
    name = "duplicates across splits"
    scenes = config.data.type in ("segmentation", "detection")
    if config.data.type == "image" or scenes:
        if "image" not in data.train.inputs:
            return CheckResult("splits", name, "skip", "streamed images are not hashed")
        # A scene's pixels alone: the same image is a leak whatever its masks or boxes say
        # (and a split's boxes are padded to its own most boxes, so they hash apart).
        hashes = {
            split: _array_hashes(part.inputs["image"], None if scenes else part.target)
            for split, part in (("train", data.train), ("val", data.val), ("test", data.test))
            if part is not None and len(part)
        }
    else:
        columns = [*features, config.data.target]
        hashes = {
            split: _frame_hashes(frame[columns])
            for split, frame in data.frames.items()
            if len(frame)
        }
    findings, worst = [], 0.0
    for split, values in hashes.items():
        if split == "train":
            continue
        shared = np.flatnonzero(np.isin(values, hashes["train"]))
        if len(shared):
            share = len(shared) / len(values)
            worst = max(worst, share)
            if scenes:
                paths = data.frames[split]["path"].iloc[shared[:EXAMPLES]]
                example = "e.g. " + ", ".join(Path(p).name for p in paths)
                unit = "images"
            else:
                rows = data.frames[split].index[shared[:EXAMPLES]].tolist()
                example, unit = f"e.g. rows {', '.join(map(str, rows))}", "rows"
            findings.append(
                f"{len(shared)} of {len(values)} {split} {unit} ({share:.1%}) also in train, "
                + example
            )
    if not findings:
        checked = ", ".join(s for s in hashes if s != "train")
        unit = "image" if scenes else "row"
        return CheckResult(
            "splits", name, "pass", f"no {checked} {unit} is an exact copy of a train {unit}"
        )
    status: Status = "fail" if worst > DUPLICATE_FAIL_SHARE else "warn"
    detail = "; ".join(findings) + " (exact copies: metrics on them are not held out)"
    return CheckResult("splits", name, status, detail)


def single_feature_leakage(config: Config, data: PreparedData, features: list[str]) -> CheckResult:
    """A feature that alone predicts the target on val almost perfectly is likely a leak."""
    name = "single-feature leakage"
    if config.data.type != "tabular":
        return CheckResult("splits", name, "skip", f"only for tables, not {config.data.type}")
    task, target = data.task, config.data.target
    rng = np.random.default_rng(config.seed)
    train = _sample(data.frames["train"], LEAK_MAX_ROWS, rng)
    val = _sample(data.frames["val"], LEAK_MAX_ROWS, rng)
    if not len(train) or not len(val):
        return CheckResult("splits", name, "skip", "empty train or val split")
    y_train, y_val = task.encode(train[target]), task.encode(val[target])
    categorical = set(getattr(data.preprocessor, "categorical", []))
    columns = features[:LEAK_MAX_COLUMNS]
    scores: dict[str, float] = {}
    for column in columns:
        score = _single_column_score(
            train[column], val[column], y_train, y_val, task, categorical=column in categorical
        )
        if score is not None:
            scores[column] = score
    metric = "balanced accuracy" if task.is_classification else "R²"
    scope = (
        f" (first {len(columns)} of {len(features)} columns)"
        if len(features) > len(columns)
        else ""
    )
    if not scores:
        return CheckResult("splits", name, "skip", "no feature varies on train")
    leaks = sorted((c for c, s in scores.items() if s >= LEAK_SCORE), key=lambda c: -scores[c])
    if leaks:
        listed = ", ".join(f"'{c}' ({metric} {scores[c]:.3f})" for c in leaks[:5])
        if len(val) >= LEAK_MIN_ROWS:
            return CheckResult(
                "splits",
                name,
                "fail",
                f"alone predicts the target on val: {listed}; likely derived from the target "
                "(add to data.drop)",
            )
        return CheckResult(
            "splits",
            name,
            "warn",
            f"alone predicts the target on val: {listed}; only {len(val)} val rows, so it may be "
            "chance, but check it is not derived from the target",
        )
    best = max(scores, key=lambda c: scores[c])
    return CheckResult(
        "splits",
        name,
        "pass",
        f"no single feature predicts the target{scope} (best: '{best}', {metric} "
        f"{scores[best]:.2f} on val)",
    )


# --- helpers ----------------------------------------------------------------------------------


def _frame_hashes(frame: pd.DataFrame) -> np.ndarray:
    import pandas as pd

    return pd.util.hash_pandas_object(frame, index=False).to_numpy()


def _array_hashes(images: np.ndarray, target: np.ndarray | None) -> np.ndarray:
    import hashlib

    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    labels = np.asarray(target).tolist() if target is not None else [None] * len(flat)
    return np.array(
        [
            hashlib.blake2b(row.tobytes() + str(label).encode(), digest_size=8).hexdigest()
            for row, label in zip(flat, labels, strict=True)
        ],
        dtype=object,
    )


def _sample(frame: pd.DataFrame, limit: int, rng: np.random.Generator) -> pd.DataFrame:
    if len(frame) <= limit:
        return frame
    return frame.iloc[np.sort(rng.choice(len(frame), size=limit, replace=False))]


def _single_column_score(
    train: pd.Series,
    val: pd.Series,
    y_train: np.ndarray,
    y_val: np.ndarray,
    task: Task,
    *,
    categorical: bool,
) -> float | None:
    """How well this one column predicts the target on val (None: the column is constant).

    The model is a lookup: each category (or each quantile bin of a number: a piecewise-constant
    fit, like a small tree) predicts its majority class, or its mean target for regression.
    """
    import pandas as pd

    if train.nunique(dropna=False) <= 1:
        return None
    if categorical:
        keys = pd.concat([train, val], ignore_index=True)
        codes, uniques = pd.factorize(keys.astype(str).where(keys.notna(), "<missing>"))
        predicted = _lookup_predictions(
            codes[: len(train)], codes[len(train) :], len(uniques), y_train, task
        )
    else:
        x_train = pd.to_numeric(train, errors="coerce").to_numpy(dtype=np.float64)
        x_val = pd.to_numeric(val, errors="coerce").to_numpy(dtype=np.float64)
        bins = LEAK_BINS if task.is_classification else 2 * LEAK_BINS
        cuts = _quantile_cuts(x_train, bins)
        predicted = _lookup_predictions(
            _bin_codes(x_train, cuts), _bin_codes(x_val, cuts), len(cuts) + 2, y_train, task
        )
        if not task.is_classification:
            # A rescaled copy of the target (other units) is a line; bins only approximate it.
            return max(
                _r2(y_val, predicted), _r2(y_val, _line_predictions(x_train, x_val, y_train))
            )
    if task.is_classification:
        return _balanced_accuracy(y_val.astype(np.int64), predicted.astype(np.int64))
    return _r2(y_val, predicted)


def _quantile_cuts(values: np.ndarray, bins: int) -> np.ndarray:
    """Cut points between quantile bins of the finite values (fewer when values repeat)."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return np.zeros(0)
    # Without the minimum: a value equal to a cut point starts the next bin, so two distinct
    # values (a 0/1 column) land in two bins.
    return np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)))[1:]


def _bin_codes(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Bin index per value; missing values get their own last bin (``len(cuts) + 1``)."""
    codes = np.searchsorted(cuts, values, side="right")
    return np.where(np.isfinite(values), codes, len(cuts) + 1)


def _line_predictions(x_train: np.ndarray, x_val: np.ndarray, y_train: np.ndarray) -> np.ndarray:
    known = np.isfinite(x_train)
    x, y = x_train[known], y_train[known]
    if len(x) < 2 or float(np.var(x)) == 0.0:
        return np.full(len(x_val), float(y_train.mean()))
    slope = float(np.mean((x - x.mean()) * (y - y.mean()))) / float(np.var(x))
    line = y.mean() + slope * (x_val - x.mean())
    return np.where(np.isfinite(x_val), line, float(y_train.mean()))


def _lookup_predictions(
    train_codes: np.ndarray, val_codes: np.ndarray, n_codes: int, y_train: np.ndarray, task: Task
) -> np.ndarray:
    """Each code's majority class (mean target for regression); unseen codes: the overall one."""
    seen = np.bincount(train_codes, minlength=n_codes) > 0
    if task.is_classification:
        n_classes = len(task.classes)
        labels = y_train.astype(np.int64)
        counts = np.bincount(train_codes * n_classes + labels, minlength=n_codes * n_classes)
        majority = counts.reshape(n_codes, n_classes).argmax(axis=1)
        overall = int(np.bincount(labels, minlength=n_classes).argmax())
        table = np.where(seen, majority, overall).astype(np.float64)
    else:
        sums = np.bincount(train_codes, weights=y_train, minlength=n_codes)
        sizes = np.bincount(train_codes, minlength=n_codes)
        table = np.where(seen, sums / np.maximum(sizes, 1), float(y_train.mean()))
    return np.asarray(table[val_codes])


def _balanced_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    # By hand: scikit-learn warns when a prediction names a class absent from the truth.
    recalls = [float(np.mean(predicted[truth == c] == c)) for c in np.unique(truth)]
    return float(np.mean(recalls)) if recalls else 0.0


def _r2(truth: np.ndarray, predicted: np.ndarray) -> float:
    total = float(np.sum((truth - truth.mean()) ** 2))
    if total == 0.0:
        return 0.0
    return 1.0 - float(np.sum((truth - predicted) ** 2)) / total
