"""A cheap, strong baseline fitted beside every model, on the same split.

An ML engineer always knows how a model compares with five lines of scikit-learn; so does every
mlsmith run. Per data kind the baseline is the one such an engineer would write:

* tables: logistic regression (classification) or ridge regression on the preprocessed table
  (the run's own standardised numerics, one-hot categories);
* text: TF-IDF of word unigrams and bigrams + logistic regression on the raw texts;
* images: logistic regression on pixels downsampled to at most 16x16, standardised;
* rankings: ridge regression of the relevance grade on the preprocessed table (pointwise), and
  a random order in place of the majority class.

Its regularisation (C, or ridge's alpha) is chosen over :data:`GRID_SIZE` log-spaced values on
the validation split, by the metric ``best.pt`` is chosen by for the model (validation loss:
log loss, or squared error), so the comparison is with a fairly tuned baseline, not a strawman.
The majority class (or the training mean) is scored too: a model below *it* has learnt nothing.

A baseline is a comparison, never a reason to fail a run: :func:`fit_baseline` returns None,
with a warning, when the data kind gives it nothing to fit on.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from scipy import sparse

    from mlsmith.data.base import PreparedData, Split
    from mlsmith.tasks import Task

log = logging.getLogger(__name__)

# Regularisation values tried (C for logistic regression; alpha = 1 / C for ridge).
GRID_SIZE = 8
C_GRID: tuple[float, ...] = tuple(float(c) for c in np.logspace(-3, 2, GRID_SIZE))
# Training rows the baseline is fitted on at most (a seeded sample beyond): it stays cheap on
# large data, where a linear model has long stopped improving with more rows anyway.
MAX_ROWS = 50_000
# Iterations of the logistic regression solver (lbfgs) at most.
MAX_ITER = 1000
# The side, in pixels, images are averaged down to at most.
IMAGE_SIDE = 16
# Splits scored, in this order.
SPLITS = ("val", "test")


@dataclass
class BaselineOutputs:
    """A fitted baseline's decoded outputs (probabilities, or predictions) on each split."""

    name: str  # "logistic regression (C=0.1)", as reports show it
    family: str  # "linear" ...
    params: dict[str, Any]  # the chosen regularisation and how it was chosen
    outputs: dict[str, np.ndarray]  # split -> decoded outputs, as the model's predict returns
    majority: dict[str, np.ndarray]  # split -> the majority class / training mean's outputs
    seconds: float


def fit_baseline(
    data: PreparedData, *, text_column: str | None = None, seed: int = 0
) -> BaselineOutputs | None:
    """Fit the data kind's baseline on ``data.train``, choose its regularisation on
    ``data.val``, and return its outputs on val and test (None when it cannot be fitted).

    Text needs the raw rows (``data.frames``) and the name of the text column.
    """
    if data.task.kind in ("segmentation", "detection"):
        log.info("no baseline: %s has no cheap linear baseline here", data.task.kind)
        return None
    started = time.perf_counter()
    features = _features(data, text_column, seed)
    if features is None:
        return None
    task = data.task
    truth = task.truth(data.train.target[features.rows])
    if task.is_classification:
        model, params = _logistic(task, features.train, truth, features.splits["val"], data.val)
        name = f"logistic regression (C={params['C']:.3g})"
    else:
        model, params = _ridge(task, features.train, truth, features.splits["val"], data.val)
        name = f"ridge regression (alpha={params['alpha']:.3g})"
    params |= {
        "features": features.description,
        "chosen_on": "val",
        "grid": len(C_GRID),
        "train_rows": len(features.rows),
    }
    splits = features.splits
    return BaselineOutputs(
        name=name,
        family="linear",
        params=params,
        outputs={split: _decoded(task, model, x) for split, x in splits.items()},
        majority={
            split: _majority(task, truth, x.shape[0]) for split, x in features.splits.items()
        },
        seconds=time.perf_counter() - started,
    )


# --- features ---------------------------------------------------------------------------------


@dataclass
class _Features:
    train: Any  # (rows, features) array or sparse matrix
    splits: dict[str, Any]  # "val" (and "test") -> features
    rows: np.ndarray  # the training rows used
    description: str


def _features(data: PreparedData, text_column: str | None, seed: int) -> _Features | None:
    """The baseline's features for the data's kind, or None (with a warning) without any."""
    splits: dict[str, Split] = {"val": data.val}
    if data.test is not None:
        splits["test"] = data.test
    rows = _sample(len(data.train), seed)
    if text_column is not None:
        return _text_features(data, text_column, rows, list(splits))
    inputs = data.train.inputs
    if "numeric" in inputs and "categorical" in inputs:
        encode, description = _table_encoder(data.train, rows), "the preprocessed table"
    elif "image" in inputs or "array" in inputs:
        encode = _image_encoder(data.train, rows)
        description = f"pixels averaged down to at most {IMAGE_SIDE}x{IMAGE_SIDE}"
    else:
        log.warning(
            "no baseline: this data's inputs (%s) have no linear baseline here (streamed image "
            "files are not decoded twice); set eval.baseline=false to silence this",
            ", ".join(sorted(inputs)),
        )
        return None
    return _Features(
        encode(data.train, rows),
        {name: encode(split, None) for name, split in splits.items()},
        rows,
        description,
    )


def _sample(n: int, seed: int) -> np.ndarray:
    if n <= MAX_ROWS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAX_ROWS, replace=False))


def _table_encoder(train: Split, rows: np.ndarray) -> Any:
    """Standardised numerics as the model sees them, categories one-hot (unknown: all zero)."""
    from scipy import sparse
    from sklearn.preprocessing import OneHotEncoder

    categorical = train.inputs["categorical"]
    onehot = (
        OneHotEncoder(handle_unknown="ignore", dtype=np.float64).fit(categorical[rows])
        if categorical.shape[1]
        else None
    )

    def encode(split: Split, rows: np.ndarray | None) -> sparse.csr_matrix:
        numeric = split.inputs["numeric"].astype(np.float64)
        cats = split.inputs["categorical"]
        if rows is not None:
            numeric, cats = numeric[rows], cats[rows]
        parts = [sparse.csr_matrix(numeric)]
        if onehot is not None:
            parts.append(onehot.transform(cats))
        return sparse.hstack(parts, format="csr")

    return encode


def _image_encoder(train: Split, rows: np.ndarray) -> Any:
    """Pixels averaged down to at most 16x16 per channel, standardised on the training rows."""
    from sklearn.preprocessing import StandardScaler

    def pixels(split: Split, rows: np.ndarray | None) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        images = split.inputs.get("image", split.inputs.get("array"))
        assert images is not None
        if rows is not None:
            images = images[rows]
        out = []
        for start in range(0, len(images), 4096):
            batch = torch.from_numpy(np.asarray(images[start : start + 4096])).float()
            if batch.ndim == 3:  # (N, H, W) stored grey pixels
                batch = batch.unsqueeze(1)
            elif batch.shape[-1] in (1, 3, 4) and batch.shape[1] not in (1, 3, 4):
                batch = batch.permute(0, 3, 1, 2)  # stored channels-last
            side = (min(IMAGE_SIDE, batch.shape[-2]), min(IMAGE_SIDE, batch.shape[-1]))
            out.append(F.adaptive_avg_pool2d(batch, side).flatten(1).numpy() / 255.0)
        return np.concatenate(out).astype(np.float64)

    scaler = StandardScaler().fit(pixels(train, rows))

    def encode(split: Split, rows: np.ndarray | None) -> np.ndarray:
        return np.asarray(scaler.transform(pixels(split, rows)))

    return encode


def _text_features(
    data: PreparedData, column: str, rows: np.ndarray, names: list[str]
) -> _Features | None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts: dict[str, pd.Series] = {}
    for name in ["train", *names]:
        frame = data.frames.get(name)
        split = data.train if name == "train" else getattr(data, name)
        if frame is None or column not in frame.columns or len(frame) != len(split):
            log.warning("no baseline: the raw texts of the %s split are not available", name)
            return None
        texts[name] = frame[column].fillna("").astype(str).reset_index(drop=True)
    # Sublinear term frequencies and word pairs: the TF-IDF + logistic regression that text
    # classification papers report as their linear baseline.
    vectorizer = TfidfVectorizer(
        sublinear_tf=True, ngram_range=(1, 2), min_df=2, max_features=200_000
    )
    try:
        train_x = vectorizer.fit_transform(texts["train"].iloc[rows])
    except ValueError:  # no word in two texts (tiny data): every word counts
        vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2))
        train_x = vectorizer.fit_transform(texts["train"].iloc[rows])
    return _Features(
        train_x,
        {name: vectorizer.transform(texts[name]) for name in names},
        rows,
        "TF-IDF of words and word pairs",
    )


# --- models -----------------------------------------------------------------------------------


def _logistic(
    task: Task, x: Any, y: np.ndarray, val_x: Any, val: Split
) -> tuple[Any, dict[str, Any]]:
    """Logistic regression with C chosen by validation log loss (the model's val/loss)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    val_truth = task.truth(val.target)
    labels = np.arange(len(task.classes))
    if len(np.unique(y)) < 2:  # one class in training: nothing to regress
        return _Constant(y), {"C": math.nan}
    best: tuple[float, float] | None = None
    search = LogisticRegression(max_iter=MAX_ITER, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in C_GRID:  # increasing C: each fit starts from the last one's weights
            search.set_params(C=c)
            search.fit(x, y)
            score = log_loss(val_truth, _proba(task, search, val_x), labels=labels)
            if best is None or score < best[0]:
                best = (score, c)
        assert best is not None
        # Refitted from scratch: exactly what LogisticRegression(C=...) gives on these rows.
        model = LogisticRegression(C=best[1], max_iter=MAX_ITER).fit(x, y)
    return model, {"C": best[1], "val_log_loss": best[0]}


def _ridge(task: Task, x: Any, y: np.ndarray, val_x: Any, val: Split) -> tuple[Any, dict[str, Any]]:
    """Ridge regression with alpha = 1 / C chosen by validation squared error."""
    from sklearn.linear_model import Ridge

    val_truth = task.truth(val.target)
    best: tuple[float, float, Any] | None = None
    for c in C_GRID:
        model = Ridge(alpha=1.0 / c).fit(x, y)
        score = float(np.mean((model.predict(val_x) - val_truth) ** 2))
        if best is None or score < best[0]:
            best = (score, 1.0 / c, model)
    assert best is not None
    return best[2], {"alpha": best[1], "val_mse": best[0]}


class _Constant:
    """The training set's only class, when it has one: what a classifier would learn."""

    def __init__(self, y: np.ndarray) -> None:
        self.classes_ = np.unique(y)

    def predict_proba(self, x: Any) -> np.ndarray:
        return np.ones((x.shape[0], 1))


def _proba(task: Task, model: Any, x: Any) -> np.ndarray:
    """(n, C) probabilities over every class of the task, those unseen in training at 0."""
    n_classes = len(task.classes)
    proba = np.zeros((x.shape[0], n_classes))
    proba[:, np.asarray(model.classes_, dtype=np.int64)] = model.predict_proba(x)
    return proba


def _decoded(task: Task, model: Any, x: Any) -> np.ndarray:
    """Outputs in the form the model's own predictions take: probabilities or values."""
    if task.is_classification:
        return _proba(task, model, x)
    return np.asarray(model.predict(x), dtype=np.float64)


def _majority(task: Task, truth: np.ndarray, n: int) -> np.ndarray:
    """The training prior (for classification: the majority class wins every row); for a
    ranking, a seeded random order (equal scores would keep the file's order, which a file
    sorted by relevance makes look perfect)."""
    if task.kind == "ranking":
        return np.random.default_rng(0).random(n)
    if not task.is_classification:
        return np.full(n, float(np.mean(truth)))
    counts = np.bincount(truth.astype(np.int64), minlength=len(task.classes))
    return np.tile(counts / counts.sum(), (n, 1))


# --- scoring ----------------------------------------------------------------------------------


def reference_name(task: str | None) -> str:
    """What the ``majority`` section of metrics.json holds for ``task``, as reports name it."""
    return {"regression": "training mean", "ranking": "random order"}.get(
        task or "", "majority class"
    )


# Top-level keys the baseline adds to metrics.json (beside the split keys).
BASELINE_KEY, MAJORITY_KEY, DIFFERENCE_KEY = "baseline", "majority", "vs_baseline"
# The metric "beats its baseline" is judged on, per task kind, and whether higher is better.
VERDICT_METRIC = {"binary": "accuracy", "multiclass": "accuracy", "regression": "rmse"}
HIGHER_IS_BETTER = {"accuracy": True, "rmse": False}


@dataclass
class BaselineScores:
    """What the baseline adds to a run: metrics.json sections and run.json's summary."""

    sections: dict[str, dict[str, Any]]  # baseline / majority / vs_baseline -> {split: ...}
    summary: dict[str, Any]  # run.json's "baseline": name, params, verdict...
    observation: str | None  # set when the model does not beat its baseline


def score_baseline(
    baseline: BaselineOutputs,
    kind: str,
    truths: dict[str, np.ndarray],
    model_outputs: dict[str, np.ndarray],
    *,
    n_resamples: int,
    confidence: float,
    seed: int,
    threshold: float | None = None,
    groups: dict[str, np.ndarray] | None = None,
    ks: list[int] | None = None,
) -> BaselineScores:
    """The baseline's and the majority's metrics with CIs on each split, and the paired
    difference model - baseline on the held-out split (test, else val).

    A ranking (``kind`` "ranking") is scored per query: ``groups`` gives each split's query
    ids, ``ks`` the NDCG cut-offs; its verdict is on NDCG at the largest k.
    """
    from mlsmith import ranking_metrics
    from mlsmith.evaluation import evaluate_outputs, paired_differences

    splits = [s for s in SPLITS if s in truths and s in baseline.outputs]
    ranking = kind == "ranking"
    if ranking and (groups is None or ks is None):
        raise ValueError("a ranking baseline is scored per query: pass groups and ks")
    by_query = groups or {}
    cutoffs = ks or list(ranking_metrics.DEFAULT_KS)

    def scored(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
        if ranking:
            return {
                s: ranking_metrics.evaluate_ranking(
                    truths[s],
                    outputs[s],
                    by_query[s],
                    cutoffs,
                    n_resamples=n_resamples,
                    confidence=confidence,
                    seed=seed,
                )
                for s in splits
            }
        return {
            s: evaluate_outputs(
                kind,
                truths[s],
                outputs[s],
                n_resamples=n_resamples,
                confidence=confidence,
                seed=seed,
            )
            for s in splits
        }

    sections: dict[str, dict[str, Any]] = {
        BASELINE_KEY: scored(baseline.outputs),
        MAJORITY_KEY: scored(baseline.majority),
    }
    held_out = splits[-1]
    if ranking:
        difference = ranking_metrics.paired_ranking_differences(
            truths[held_out],
            model_outputs[held_out],
            baseline.outputs[held_out],
            by_query[held_out],
            cutoffs,
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
        )
        metric = f"ndcg_{max(cutoffs)}"
    else:
        difference = paired_differences(
            kind,
            truths[held_out],
            model_outputs[held_out],
            baseline.outputs[held_out],
            thresholds=(threshold, None),  # the model decides as its predictions do
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
        )
        metric = VERDICT_METRIC[kind]
    sections[DIFFERENCE_KEY] = {held_out: difference}
    entry = difference[metric]
    model_value, base_value, diff = entry["a"], entry["b"], entry["value"]
    bounds = entry.get("ci95")
    low, high = bounds if isinstance(bounds, list) else (None, None)
    beats = None
    if isinstance(diff, float):
        beats = diff > 0 if HIGHER_IS_BETTER.get(metric, True) else diff < 0
    observation = None
    if beats is False:
        interval = (
            f", {confidence:.0%} CI [{low:.3g}, {high:.3g}]"
            if low is not None and high is not None
            else ""
        )
        features = baseline.params["features"]
        observation = (
            f"the model does not beat its baseline, {baseline.name} on {features}: "
            f"{held_out} {metric} {model_value:.4g} vs {base_value:.4g} (difference {diff:+.4g}"
            f"{interval}); tune the model (`mlsmith tune`) or consider the baseline itself"
        )
    summary = {
        "name": baseline.name,
        "family": baseline.family,
        "params": baseline.params,
        "seconds": round(baseline.seconds, 3),
        "split": held_out,
        "metric": metric,
        "model": model_value,
        "baseline": base_value,
        "difference": diff,
        "ci95": [low, high],
        "beats": beats,
    }
    return BaselineScores(sections, summary, observation)
