"""One trial: sample the space, train with a pruning callback, tell the study.

An interrupt (Ctrl-C, SIGTERM) passes through untouched: the study loop re-queues the trial.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from typing import TYPE_CHECKING, Any

from mlsmith.config import (
    Config,
    TuneConfig,
)
from mlsmith.errors import ConfigError, MlsmithError, did_you_mean

if TYPE_CHECKING:
    import optuna

    from mlsmith.training.callbacks import TrainingState

from mlsmith.tuning.space import apply_params, suggest
from mlsmith.tuning.trial_queue import ERROR_ATTR, trial_for

log = logging.getLogger(__name__)


class PruningCallback:
    """Reports the tuned metric each epoch (or boosting round) and stops a hopeless trial.

    Generic over model families: it reads only ``row["epoch"]``, ``row[metric]`` and sets
    ``state.should_stop``.
    """

    def __init__(self, trial: optuna.Trial, metric: str, direction: str) -> None:
        self.trial = trial
        self.metric = metric
        self.direction = direction
        self.values: list[float] = []
        self.pruned_at: int | None = None
        self.unknown_metric: list[str] | None = None

    def on_epoch_end(self, state: TrainingState, row: dict[str, float]) -> None:
        if self.metric not in row:
            self.unknown_metric = sorted(k for k in row if k.startswith(("val/", "train/")))
            state.should_stop = True
            return
        value = float(row[self.metric])
        if not math.isfinite(value):
            return
        self.values.append(value)
        self.trial.report(value, step=int(row["epoch"]))
        if self.trial.should_prune():
            self.pruned_at = int(row["epoch"])
            state.should_stop = True

    @property
    def best(self) -> float | None:
        if not self.values:
            return None
        return min(self.values) if self.direction == "minimize" else max(self.values)


def run_trial(
    study: optuna.Study,
    trial_id: int,
    cfg: Config,
    tune: TuneConfig,
    direction: str,
    *,
    parent_run_id: str | None,
    preflight: bool,
) -> str:
    """Sample, train and tell the claimed trial ``trial_id``; returns its final state's name.

    Every failure records its ``error`` before the trial is told FAIL: that is what tells an
    ordinary failure (it counts toward the budget) from a process that died (re-queued).
    """
    from optuna.trial import TrialState

    from mlsmith.pipeline import run_training

    trial = trial_for(study, trial_id)
    # Which process ran it: with several workers (or machines) the first thing to ask.
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    params = {key: suggest(trial, key, param) for key, param in tune.space.items()}
    callback = PruningCallback(trial, tune.metric, direction)
    # The CV mean is known only once every fold has run: nothing to report epoch by epoch.
    by_cv = tune.objective == "cv"
    extra: dict[str, Any] = {
        "tune": None,
        "eval.report": False,  # plotting costs seconds per trial; best.yaml can be reported
        "eval.bootstrap": 0,  # intervals do not change the tuned metric
        "eval.importance_repeats": 0,  # nor does feature importance
        # Exporting costs seconds per trial; `mlsmith export` packages the trial kept.
        "export.package": False,
        "track.register": None,  # a trial is not a release
        "track.parent_run_id": parent_run_id,
    }
    if not preflight:
        extra["train.preflight"] = False  # checked once per process; never changes the weights
    try:
        # One line per trial (below), not one per epoch of every trial.
        run = run_training(
            apply_params(cfg, params, extra),
            callbacks=[] if by_cv else [callback],
            progress=False,
            epoch_lines=False,
        )
    except Exception as error:  # a broken trial must not end the study
        message = str(error) if isinstance(error, MlsmithError) else repr(error)
        log.warning("trial %d failed: %s", trial.number, message)
        trial.set_user_attr(ERROR_ATTR, message)
        study.tell(trial, state=TrialState.FAIL)
        return "FAIL"
    trial.set_user_attr("run_dir", str(run.path))
    if cfg.data.type == "timeseries":
        # A backtest has no epochs: its validation windows' metric is the trial's value.
        try:
            value = forecast_objective(run.metrics, tune.metric)
        except ConfigError as error:
            trial.set_user_attr(ERROR_ATTR, str(error))
            study.tell(trial, state=TrialState.FAIL)
            raise
        callback.values = [value] if math.isfinite(value) else []
    elif by_cv:
        try:
            value = cv_objective(run.metrics, tune.metric, run.model.task.kind)
        except ConfigError as error:
            trial.set_user_attr(ERROR_ATTR, str(error))
            study.tell(trial, state=TrialState.FAIL)
            raise
        callback.values = [value] if math.isfinite(value) else []
    if callback.unknown_metric is not None:
        unknown = ConfigError(
            f"tune.metric: unknown metric '{tune.metric}'"
            f"{did_you_mean(tune.metric, callback.unknown_metric)}; available: "
            + ", ".join(callback.unknown_metric)
        )
        trial.set_user_attr(ERROR_ATTR, str(unknown))
        study.tell(trial, state=TrialState.FAIL)
        raise unknown
    if callback.pruned_at is not None:
        log.info("trial %d pruned at epoch %d", trial.number, callback.pruned_at)
        _mark_run(cfg, run.info.get("mlflow_run_id"), "KILLED", trial.number)
        study.tell(trial, state=TrialState.PRUNED)
        return "PRUNED"
    if callback.best is None:
        trial.set_user_attr(ERROR_ATTR, f"{tune.metric} was never finite")
        study.tell(trial, state=TrialState.FAIL)
        return "FAIL"
    _mark_run(cfg, run.info.get("mlflow_run_id"), None, trial.number)
    study.tell(trial, callback.best)
    log.info("trial %d: %s = %.6g, params %s", trial.number, tune.metric, callback.best, params)
    return "COMPLETE"


def forecast_objective(metrics: dict[str, Any], metric: str) -> float:
    """``tune.metric`` (``val/mase``, ``val/wql``...) of a forecasting run's validation
    windows, from metrics.json; NaN when undefined."""
    name = metric.split("/", 1)[1] if metric.startswith("val/") else metric
    held = metrics.get("val") or {}
    if name not in held:
        raise ConfigError(
            f"tune.metric: '{metric}' is not a forecast's validation metric"
            f"{did_you_mean(name, list(held))}; available: " + ", ".join(f"val/{k}" for k in held)
        )
    value = held[name].get("value")
    return float(value) if value is not None else math.nan


def cv_objective(metrics: dict[str, Any], metric: str, kind: str) -> float:
    """``tune.metric``'s mean over the held-out folds (tune.objective cv), from metrics.json.

    ``val/<name>`` reads ``<name>``; ``val/loss`` reads the task's loss: ``log_loss`` for
    classification, ``mse`` for regression (in the target's units, not standardised: the same
    ordering of trials). NaN when undefined on every fold (the trial then fails).
    """
    held = (metrics.get("cv") or {}).get("held_out") or {}
    name = metric.split("/", 1)[1] if metric.startswith(("val/", "train/")) else metric
    if name == "loss":
        name = "mse" if kind == "regression" else "log_loss"
    if name not in held:
        raise ConfigError(
            f"tune.metric: '{metric}' has no cross-validation mean"
            f"{did_you_mean(name, list(held))}; available with tune.objective cv: "
            + ", ".join(f"val/{k}" for k in held)
        )
    mean = held[name].get("mean")
    return float(mean) if mean is not None else math.nan


def _mark_run(cfg: Config, run_id: str | None, status: str | None, number: int) -> None:
    """Tag a trial's MLflow run with its trial number; a pruned one ends as KILLED."""
    from mlsmith.tracking import Tracker

    tracker = Tracker.reopen(cfg, run_id)
    if tracker is None:
        return
    tracker.set_tags({"mlsmith.trial": str(number)})
    if status:
        tracker.finish(status)
