"""K-fold cross-validation inside a training run (``eval.cv``), for tabular data.

What is folded, and what is not:

* The folds are cut from the **training split only**. The validation split stays what it is
  in every run: each fold model's selection set (early stopping, the best checkpoint, a
  booster's best round), so a fold's held-out rows are never used to choose anything. The test
  split is never touched: the run's final model is scored on it as usual.
* Each fold refits the preprocessing (imputation medians, scaling, vocabularies, a regression
  target's scale: :func:`mlsmith.data.tabular.refit`) on its own training rows, then trains a
  fresh, identically seeded model of the configured family and scores it on its held-out rows.
* Folds are ordered in time when ``data.split.time`` is set (sorted by that column; fold k
  trains on every row before its held-out block, as scikit-learn's ``TimeSeriesSplit``),
  grouped when ``data.split.group`` is set (``GroupKFold``: no group in two folds), stratified
  for classification (``StratifiedKFold``, seeded) unless ``data.split.stratify`` is false,
  and plain seeded ``KFold`` otherwise.

``eval.cv.final`` picks the run's model: ``refit`` trains it on the whole training split,
selected on the validation split, exactly as the run would without CV (the folds only measure);
``best_fold`` keeps the fold model with the lowest held-out loss (``log_loss`` for
classification, ``mse`` for regression) with its fold's preprocessing, and trains nothing more.

Results: ``metrics.json`` gets ``cv: {"held_out": {metric: {mean, std, ci95, folds}}}``, where
``folds`` lists each fold's value in fold order, ``std`` is the sample standard deviation over
the folds and ``ci95`` is a Student-t interval over the fold values (mean +- t * std / sqrt(K),
at ``eval.confidence``; the key is "ci95" whatever the level, as elsewhere). The folds share
training rows, so the interval is a rough guide, narrower than the truth. ``run.json`` gets
``cv`` with the scheme and each fold's sizes; every fold writes ``cv/fold-<k>/`` (its
preprocessing, model, history and held-out row ids) and is one MLflow run nested under the
run's own.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.config import Config
from mlsmith.errors import ConfigError, DataError
from mlsmith.files import write_json
from mlsmith.run import CV_METRICS_KEY, record_sections
from mlsmith.tasks import RankingTask, Task
from mlsmith.training.history import STEPS_FILE

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.data.base import PreparedData, Split
    from mlsmith.data.tabular import TabularPreprocessor
    from mlsmith.models.base import FitContext, FitSummary, Model
    from mlsmith.tracking import Tracker

log = logging.getLogger(__name__)

CV_DIR = "cv"
FOLD_FILE = "fold.json"
HELD_OUT = "held_out"


@dataclass
class FoldPlan:
    """The folds of one run: held-out row positions in the training split, and the raw rows."""

    scheme: str
    held_out: list[np.ndarray]
    frames: dict[str, pd.DataFrame]

    @property
    def train(self) -> pd.DataFrame:
        return self.frames["train"]


@dataclass
class CVOutcome:
    """What cross-validation adds to the run; ``kept`` is the best fold's (data, model, fit)
    with ``eval.cv.final: best_fold``, else None."""

    summary: dict[str, Any]
    info: dict[str, Any]
    kept: tuple[PreparedData, Model, FitSummary] | None = None
    fold_runs: list[str | None] = field(default_factory=list)


def plan_folds(cfg: Config, data: PreparedData, *, resume: object = None) -> FoldPlan:
    """Check that ``eval.cv`` applies and cut the folds; raised errors come before any run
    directory exists. Keeps the raw rows of every split (training drops them from ``data``)."""
    cv = cfg.eval.cv
    assert cv is not None
    if cfg.data.type != "tabular":
        raise ConfigError(
            f"eval.cv: cross-validation works on tabular data; data.type is '{cfg.data.type}'"
        )
    if resume is not None:
        raise ConfigError("eval.cv: a cross-validated run cannot be resumed; train it again")
    frames = dict(data.frames)
    train = frames.get("train")
    if train is None or len(train) == 0:
        raise DataError("eval.cv: the training split has no rows to fold")
    scheme, held_out = _cut(cfg, train, classification=data.task.is_classification)
    return FoldPlan(scheme, held_out, frames)


def _cut(cfg: Config, train: pd.DataFrame, *, classification: bool) -> tuple[str, list[np.ndarray]]:
    from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold, TimeSeriesSplit

    k = cfg.eval.cv.folds if cfg.eval.cv else 0
    split = cfg.data.split
    positions = np.arange(len(train))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if split.time:
                from mlsmith.data.splits import sortable

                order = np.argsort(sortable(train[split.time], split.time, cfg.data.path))
                folds = [order[h] for _, h in TimeSeriesSplit(n_splits=k).split(order)]
                scheme = f"time-ordered on '{split.time}'"
            elif split.group:
                groups = train[split.group].to_numpy()
                folds = [h for _, h in GroupKFold(n_splits=k).split(positions, groups=groups)]
                scheme = f"grouped by '{split.group}'"
            elif classification and split.stratify is not False:
                labels = train[cfg.data.target].astype(str).to_numpy()
                splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=cfg.seed)
                folds = [h for _, h in splitter.split(positions, labels)]
                scheme = "stratified"
            else:
                splitter = KFold(n_splits=k, shuffle=True, random_state=cfg.seed)
                folds = [h for _, h in splitter.split(positions)]
                scheme = "random"
        for warning in caught:  # e.g. a class with fewer rows than folds
            log.warning("eval.cv: %s", warning.message)
    except ValueError as error:
        raise DataError(
            f"eval.cv: cannot cut the training split's {len(train)} rows into {k} folds: "
            f"{error} (lower eval.cv.folds or add rows)"
        ) from None
    return scheme, [np.sort(h) for h in folds]


def cross_validate(
    cfg: Config, plan: FoldPlan, data: PreparedData, context: FitContext, tracker: Tracker
) -> CVOutcome:
    """Train and score every fold of ``plan``; write the ``cv`` block of metrics.json.

    ``context`` is the run's: fold files go under ``<run>/cv/``; the run's callbacks see the
    kept fold's history replayed (``best_fold``) or the final fit (``refit``), not every fold.
    """
    from mlsmith.data.tabular import TabularPreprocessor

    cv = cfg.eval.cv
    assert cv is not None and isinstance(data.preprocessor, TabularPreprocessor)
    run_dir = Path(context.run_dir)
    train = plan.train
    results: list[dict[str, float]] = []
    fits: list[tuple[PreparedData, Model, FitSummary]] = []
    fold_runs: list[str | None] = []
    sizes: list[dict[str, int]] = []
    started = time.perf_counter()
    for index, held in enumerate(plan.held_out):
        fold = index + 1
        keep = np.ones(len(train), dtype=bool)
        keep[held] = False
        if plan.scheme.startswith("time"):
            # Ordered folds: train on what came before the held-out block only.
            keep &= _before(train, held, cfg)
        fold_train, fold_held = train.iloc[np.flatnonzero(keep)], train.iloc[held]
        if len(fold_train) == 0:
            raise DataError(
                f"eval.cv: fold {fold} has no training rows (every earlier row shares its "
                "first time); lower eval.cv.folds"
            )
        fold_dir = run_dir / CV_DIR / f"fold-{fold}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        write_json(
            fold_dir / FOLD_FILE,
            {"fold": fold, "held_out_rows": [_row_id(i) for i in fold_held.index]},
        )
        fold_data, model = _fold_model(cfg, data.preprocessor, fold_train, plan.frames)
        fold_data.preprocessor.save(fold_dir)
        nested = _nested_tracker(cfg, tracker, fold, fold_dir)
        summary = _fit_fold(model, fold_data, fold_dir, nested, context)
        pre = fold_data.preprocessor
        assert isinstance(pre, TabularPreprocessor)
        held_split = _encode(pre, fold_held, f"cv fold {fold} held-out rows")
        truth = pre.task.truth(held_split.target)
        metrics = pre.task.metrics(truth, model.predict(held_split.inputs), held_split.groups)
        results.append(metrics)
        if nested is not None:
            nested.log_metrics({f"{HELD_OUT}/{k}": v for k, v in metrics.items() if _finite(v)})
            nested.finish("FINISHED")
        fold_runs.append(nested.run_id if nested is not None else None)
        sizes.append({"fold": fold, "train": len(fold_train), HELD_OUT: len(fold_held)})
        log.info(
            "cv fold %d/%d: %d training rows, %d held out; %s",
            fold,
            len(plan.held_out),
            len(fold_train),
            len(fold_held),
            ", ".join(f"{k} {v:.4g}" for k, v in list(metrics.items())[:3]),
        )
        if cv.final == "best_fold":  # refit needs no fold model: do not hold K in memory
            fits.append((fold_data, model, summary))

    block = {HELD_OUT: summarise(results, cfg.eval.confidence)}
    record_sections(run_dir, {CV_METRICS_KEY: block})
    loss, higher = _selection_metric(data.task)
    kept_index = None
    if cv.final == "best_fold":
        losses = [r.get(loss, math.nan) for r in results]
        pick = np.nanargmax if higher else np.nanargmin
        kept_index = int(pick(losses)) if any(_finite(v) for v in losses) else 0
    info: dict[str, Any] = {
        "folds": len(plan.held_out),
        "scheme": plan.scheme,
        "final": cv.final,
        "kept_fold": kept_index + 1 if kept_index is not None else None,
        "selected_on": loss if kept_index is not None else None,
        "interval": "student-t over the fold values",
        "sizes": sizes,
        "mlflow_run_ids": fold_runs,
        "seconds": round(time.perf_counter() - started, 2),
    }
    means = {
        f"cv/{HELD_OUT}/{name}_mean": entry["mean"]
        for name, entry in block[HELD_OUT].items()
        if entry["mean"] is not None
    }
    tracker.log_metrics(means)
    kept = None
    if kept_index is not None:
        kept = _keep(fits[kept_index], plan, run_dir / CV_DIR / f"fold-{kept_index + 1}", context)
    return CVOutcome(block, info, kept, fold_runs)


def _selection_metric(task: Task) -> tuple[str, bool]:
    """The held-out metric ``best_fold`` picks the fold by, and whether higher is better: the
    task's loss, or a ranking's NDCG at its largest k."""
    if isinstance(task, RankingTask):
        return f"ndcg_{max(task.ks)}", True
    return ("log_loss" if task.is_classification else "mse"), False


def summarise(results: list[dict[str, float]], confidence: float = 0.95) -> dict[str, Any]:
    """Per metric: the mean, sample std and Student-t interval over the folds, and each fold's
    value (None where undefined, e.g. ROC-AUC on a fold with one class)."""
    from scipy import stats

    summary: dict[str, Any] = {}
    names = list(dict.fromkeys(name for r in results for name in r))
    for name in names:
        values = [r.get(name, math.nan) for r in results]
        finite = np.array([v for v in values if _finite(v)], dtype=np.float64)
        entry: dict[str, Any] = {"mean": None, "std": None, "ci95": None}
        if len(finite):
            mean = float(finite.mean())
            entry["mean"] = mean
            if len(finite) > 1:
                std = float(finite.std(ddof=1))
                half = float(stats.t.ppf(0.5 + confidence / 2, len(finite) - 1)) * std
                half /= math.sqrt(len(finite))
                entry |= {"std": std, "ci95": [mean - half, mean + half]}
        entry["folds"] = [float(v) if _finite(v) else None for v in values]
        summary[name] = entry
    return summary


# --- one fold ----------------------------------------------------------------------------------


def _fold_model(
    cfg: Config,
    base: TabularPreprocessor,
    fold_train: pd.DataFrame,
    frames: dict[str, pd.DataFrame],
) -> tuple[PreparedData, Model]:
    """The fold's data (preprocessing fitted on ``fold_train`` only) and its untrained model,
    seeded as every run's model is."""
    from mlsmith import families
    from mlsmith.data.base import PreparedData
    from mlsmith.data.tabular import refit
    from mlsmith.training.reproducibility import seed_everything

    pre = refit(base, fold_train)
    val, test = frames["val"], frames.get("test")
    data = PreparedData(
        task=pre.task,
        preprocessor=pre,
        train=_encode(pre, fold_train, "cv fold training rows"),
        val=_encode(pre, val, "validation split"),
        test=_encode(pre, test, "test split") if test is not None and len(test) else None,
        fingerprint="",
        frames=frames,
    )
    seed_everything(cfg.seed)
    return data, families.model_family(cfg.model.type)(cfg, pre)


def _encode(pre: TabularPreprocessor, frame: pd.DataFrame, name: str) -> Split:
    from mlsmith.data.base import Split

    return Split(
        pre.transform(frame, name), pre.encode_target(frame, name), pre.query_groups(frame, name)
    )


def _fit_fold(
    model: Model, data: PreparedData, fold_dir: Path, nested: Tracker | None, run: FitContext
) -> FitSummary:
    from mlsmith.models.base import FitContext
    from mlsmith.training.history import HistoryWriter

    callbacks: list[object] = [HistoryWriter(fold_dir)]
    if nested is not None:
        callbacks.append(nested)
    context = FitContext(run_dir=fold_dir, callbacks=callbacks, metadata=run.metadata)
    try:
        return model.fit(data, context)
    except BaseException as error:
        if nested is not None:
            nested.finish("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise


def _nested_tracker(cfg: Config, tracker: Tracker, fold: int, fold_dir: Path) -> Tracker | None:
    """An MLflow run for the fold, nested under the run's; None when tracking is off."""
    from mlsmith.tracking import Tracker

    if not tracker.active:
        return None
    settings = cfg.track.model_copy(update={"parent_run_id": tracker.run_id, "uri": tracker.uri})
    nested = Tracker(settings, output_dir=cfg.output_dir, experiment=tracker.experiment)
    run_name = f"{fold_dir.parent.parent.name}-fold{fold}"
    params = {**cfg.flat(), "cv.fold": fold}
    tags = {"mlsmith.cv_fold": str(fold), "mlsmith.run_dir": str(fold_dir)}
    return nested if nested.start(run_name=run_name, params=params, tags=tags) else None


def _keep(
    fit: tuple[PreparedData, Model, FitSummary], plan: FoldPlan, fold_dir: Path, run: FitContext
) -> tuple[PreparedData, Model, FitSummary]:
    """Make the fold's model the run's: its preprocessing, model files and history go into the
    run directory, and the run's callbacks (history, MLflow, a tuner) see its epochs."""
    from mlsmith.models.boosting import RoundState
    from mlsmith.training.callbacks import CallbackList

    data, model, summary = fit
    run_dir = Path(run.run_dir)
    data.preprocessor.save(run_dir)
    for source in model.artifacts(fold_dir):
        target = run_dir / source.relative_to(fold_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    rows = summary.history
    lr = float(rows[-1].get("lr", math.nan)) if rows else math.nan
    state = RoundState(epochs=max(len(rows), 1), lr=lr)
    callbacks = CallbackList(run.callbacks)
    callbacks.call("on_fit_start", state)
    for row in rows:
        state.history.append(row)
        state.epoch = int(row["epoch"])
        callbacks.call("on_epoch_end", state, row)
    callbacks.call("on_fit_end", state)
    # The replay wrote history.csv; the optimizer steps (torch families) are the fold's own.
    if (fold_dir / STEPS_FILE).is_file():
        shutil.copyfile(fold_dir / STEPS_FILE, run_dir / STEPS_FILE)
    return data, model, summary


# --- helpers -----------------------------------------------------------------------------------


def _before(train: pd.DataFrame, held: np.ndarray, cfg: Config) -> np.ndarray:
    """Rows strictly earlier than the held-out block's first time (ordered folds)."""
    from mlsmith.data.splits import sortable

    assert cfg.data.split.time is not None
    times = sortable(train[cfg.data.split.time], cfg.data.split.time, cfg.data.path)
    return np.asarray(times < times[held].min())


def _row_id(label: Any) -> Any:
    return int(label) if isinstance(label, (int, np.integer)) else str(label)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
