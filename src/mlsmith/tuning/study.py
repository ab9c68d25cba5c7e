"""Hyperparameter search with Optuna; with the tuning package the only code that imports optuna.

A study is a fixed budget of trials kept in an Optuna storage (SQLite by default, PostgreSQL for
several machines). The budget is exact across processes: the first process to open the study
tops it up with WAITING trials to ``trials`` in all, and every worker only runs trials it takes
from that queue (taking one is an atomic compare-and-set in the storage), so none is lost or run
twice. Each trial is one ``mlsmith.train`` with the sampled values applied to the config; a
callback reports the monitored metric every epoch and stops training when the pruner says so.
A worker killed with ``kill -9`` leaves its trial RUNNING; its heartbeat stops, and after
``GRACE_S`` seconds any process of the study marks it FAIL, so the same command resumes.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mlsmith.config import (
    Config,
    TuneConfig,
)
from mlsmith.errors import ConfigError
from mlsmith.files import write_text
from mlsmith.sql import missing_driver
from mlsmith.training.callbacks import resolve_mode

if TYPE_CHECKING:
    import optuna


from mlsmith.tuning.space import best_config, decode_params, tune_section
from mlsmith.tuning.trial import run_trial

log = logging.getLogger(__name__)

# A running trial records a heartbeat every HEARTBEAT_S; one silent for GRACE_S is stale (its
# process died) and is marked FAIL.
HEARTBEAT_S = 2
GRACE_S = 10
BEST_FILE = "best.yaml"
REPORT_FILE = "tune_report.html"
BASE_FILE = "base.yaml"
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


@dataclass
class TrialRecord:
    """One trial as the table and the report show it."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    error: str | None = None
    run_dir: str | None = None


@dataclass
class TuneResult:
    """What a study found: its best trial, files and every trial."""

    study: str
    storage: str
    direction: str
    metric: str
    folder: Path
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    best_config: Path | None
    report: Path | None
    counts: dict[str, int]
    trials: list[TrialRecord] = field(default_factory=list)

    def top(self, n: int = 10) -> list[TrialRecord]:
        """Finished trials best first, then the rest by number."""
        sign = 1.0 if self.direction == "minimize" else -1.0
        scored = sorted(
            (t for t in self.trials if t.state == "COMPLETE" and t.value is not None),
            key=lambda t: sign * (t.value or 0.0),
        )
        others = [t for t in self.trials if t not in scored]
        return (scored + others)[:n]


# --- the study --------------------------------------------------------------------------------


def study_folder(cfg: Config, study: str) -> Path:
    return Path(cfg.output_dir) / cfg.experiment / f"tune-{study}"


def default_storage(cfg: Config) -> str:
    return f"sqlite:///{(Path(cfg.output_dir) / cfg.experiment / 'optuna.db').as_posix()}"


@contextmanager
def open_storage(url: str) -> Iterator[optuna.storages.BaseStorage]:
    """An RDB storage with heartbeats, so a dead worker's trial can be failed; its database
    connections are closed on leaving the block."""
    import optuna

    problem = missing_driver(url, "a PostgreSQL study")
    if problem:
        raise ConfigError(problem)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    for name in ("alembic.runtime.migration", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # Heartbeats are "experimental" in Optuna since v2.9; they are how stale trials end.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            rdb = optuna.storages.RDBStorage(
                url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
            )
    except Exception as error:  # a wrong URL, an unreachable server
        raise ConfigError(f"--storage {url}: cannot open the study storage: {error}") from None
    try:
        # One caching wrapper for every Study of this process: each wrapper only knows the
        # trials it has read, and Optuna would wrap the RDBStorage anew for every Study.
        yield optuna.storages.get_storage(rdb)
    finally:
        rdb.remove_session()
        rdb.engine.dispose()


def build_sampler(tune: TuneConfig, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if tune.sampler == "cmaes":
        if importlib.util.find_spec("cmaes") is None:
            raise ConfigError(
                "tune.sampler: cmaes needs the 'cmaes' package, which is not installed "
                "(pip install cmaes); or use tpe, random or gp"
            )
        return optuna.samplers.CmaEsSampler(seed=seed)
    if tune.sampler == "gp":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def build_pruner(tune: TuneConfig, epochs: int) -> optuna.pruners.BasePruner:
    import optuna

    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    if tune.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_epochs
    )


def run_study(
    cfg: Config,
    *,
    trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    workers: int = 1,
    worker_index: int = 0,
) -> TuneResult:
    """Open (or resume) the study, run trials until its budget is spent, write the results.

    ``worker_index`` > 0 marks a helper process started by another: it runs trials and returns
    without writing best.yaml or the report.
    """
    import optuna

    tune = tune_section(cfg)
    if trials is not None:
        if trials < 1:
            raise ConfigError(f"--trials must be >= 1, found {trials}")
        tune = tune.model_copy(update={"trials": trials})
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, found {workers}")
    name = study or cfg.experiment
    url = storage or default_storage(cfg)
    direction = tune.direction
    if direction == "auto":
        direction = "minimize" if resolve_mode(tune.metric, "auto") == "min" else "maximize"
    folder = study_folder(cfg, name)
    folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with open_storage(url) as rdb:
        base_seed = cfg.seed if tune.seed is None else tune.seed
        created = optuna.create_study(
            study_name=name, storage=rdb, direction=direction, load_if_exists=True
        )
        if created.direction.name.lower() != direction:
            raise ConfigError(
                f"study '{name}' in {url} was created to {created.direction.name.lower()}, "
                f"the config asks to {direction}; use another --study name"
            )
        existing = created.get_trials(deepcopy=False)
        # A process that resumes must not replay the first trials' random draws.
        sampler = build_sampler(tune, base_seed + 1000 * worker_index + len(existing))
        pruner = build_pruner(tune, cfg.train.epochs)
        parent_run_id = None
        if worker_index == 0:
            for _ in range(tune.trials - len(existing)):
                created.enqueue_trial({})
            parent_run_id = _parent_run(cfg, created, name, tune)
        else:
            parent_run_id = created.user_attrs.get("mlflow_parent_run_id")

        helpers: list[subprocess.Popen[bytes]] = []
        if workers > 1 and worker_index == 0:
            base = folder / BASE_FILE
            write_text(base, cfg.to_yaml())
            helpers = [_start_worker(base, url, name, i, timeout) for i in range(1, workers)]
        deadline = None if timeout is None else time.monotonic() + timeout
        first = True
        try:
            while deadline is None or time.monotonic() < deadline:
                trial_id = _take_waiting(rdb, name)
                if trial_id is None:
                    break
                try:
                    # A fresh Study per trial: Optuna caches the trial list inside a Study object.
                    current = optuna.load_study(
                        study_name=name, storage=rdb, sampler=sampler, pruner=pruner
                    )
                    with _heartbeat(rdb, trial_id):
                        run_trial(
                            current,
                            trial_id,
                            cfg,
                            tune,
                            direction,
                            parent_run_id=parent_run_id,
                            preflight=first and cfg.train.preflight,
                        )
                except KeyboardInterrupt:
                    # Ctrl-C may land before run_trial can record it (loading the study, sampling):
                    # a claimed trial must not stay RUNNING.
                    _fail_if_running(rdb, trial_id, "interrupted")
                    raise
                first = False
            for helper in helpers:
                helper.wait()
        except BaseException:
            for helper in helpers:
                helper.terminate()
            raise
        if worker_index > 0:
            return _result(created, cfg, tune, name, url, direction, folder, None, None)
        _wait_for_running(created, rdb, name, deadline)
        best_path, report_path = _write_outputs(created, cfg, tune, folder, direction)
        result = _result(created, cfg, tune, name, url, direction, folder, best_path, report_path)
        _finish_parent(cfg, parent_run_id, result)
        return result


def _take_waiting(storage: optuna.storages.BaseStorage, name: str) -> int | None:
    """Atomically claim one WAITING trial of the study; None when the queue is empty."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(name)
    for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            # False when another process claimed it first.
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                return trial._trial_id
        except UpdateFinishedTrialError:
            continue
    return None


def _fail_if_running(storage: optuna.storages.BaseStorage, trial_id: int, error: str) -> None:
    """Mark a claimed trial FAIL with ``error`` unless it already finished."""
    from optuna.trial import TrialState

    if storage.get_trial(trial_id).state == TrialState.RUNNING:
        storage.set_trial_user_attr(trial_id, "error", error)
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)


@contextmanager
def _heartbeat(storage: Any, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat every HEARTBEAT_S seconds while it runs.

    ``storage`` is Optuna's RDB storage (or its caching wrapper), both heartbeat-capable.
    """
    storage.record_heartbeat(trial_id)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # a missed beat only risks a late FAIL
                log.debug("heartbeat failed", exc_info=True)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _wait_for_running(
    study: optuna.Study, storage: optuna.storages.BaseStorage, name: str, deadline: float | None
) -> None:
    """Wait for trials other processes run; a dead process's trial is failed after GRACE_S."""
    import optuna
    from optuna.trial import TrialState

    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        running = storage.get_all_trials(
            storage.get_study_id_from_name(name), deepcopy=False, states=(TrialState.RUNNING,)
        )
        if not running:
            return
        if deadline is not None and time.monotonic() > deadline + GRACE_S:
            log.warning("%d trials still running in other processes", len(running))
            return
        time.sleep(1.0)


def _start_worker(
    base: Path, url: str, name: str, index: int, timeout: float | None
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "mlsmith", "tune", str(base), "--storage", url]
    command += ["--study", name, "--worker-index", str(index)]
    if timeout is not None:
        command += ["--timeout", str(timeout)]
    return subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _records(study: optuna.Study, tune: TuneConfig) -> list[TrialRecord]:
    return [
        TrialRecord(
            number=t.number,
            state=t.state.name,
            value=t.value if t.state.name == "COMPLETE" else None,
            params=decode_params(tune.space, t.params),
            error=t.user_attrs.get("error"),
            run_dir=t.user_attrs.get("run_dir"),
        )
        for t in study.get_trials(deepcopy=False)
    ]


def _result(
    study: optuna.Study,
    cfg: Config,
    tune: TuneConfig,
    name: str,
    url: str,
    direction: str,
    folder: Path,
    best_path: Path | None,
    report_path: Path | None,
) -> TuneResult:
    records = _records(study, tune)
    counts = {state: sum(r.state == state for r in records) for state in STATES}
    complete = [r for r in records if r.state == "COMPLETE" and r.value is not None]
    best = None
    if complete:
        pick = min if direction == "minimize" else max
        best = pick(complete, key=lambda r: r.value or 0.0)
    return TuneResult(
        study=name,
        storage=url,
        direction=direction,
        metric=tune.metric,
        folder=folder,
        best_value=best.value if best else None,
        best_params=best.params if best else {},
        best_trial=best.number if best else None,
        best_config=best_path,
        report=report_path,
        counts=counts,
        trials=records,
    )


def _write_outputs(
    study: optuna.Study, cfg: Config, tune: TuneConfig, folder: Path, direction: str
) -> tuple[Path | None, Path | None]:
    from mlsmith.reports.tuning import render_tune_report

    records = _records(study, tune)
    complete = [r for r in records if r.state == "COMPLETE" and r.value is not None]
    best_path = None
    if complete:
        pick = min if direction == "minimize" else max
        best = pick(complete, key=lambda r: r.value or 0.0)
        best_path = folder / BEST_FILE
        header = (
            f"# Best trial {best.number} of study '{study.study_name}': "
            f"{tune.metric} = {best.value:.6g}\n"
        )
        text = yaml.safe_dump(best_config(cfg, best.params).to_dict(), sort_keys=False)
        write_text(best_path, header + text)
    importances = param_importances(study)
    report_path = folder / REPORT_FILE
    write_text(
        report_path,
        render_tune_report(
            study.study_name,
            tune.metric,
            direction,
            records,
            importances,
            frozenset(k for k, p in tune.space.items() if getattr(p, "log", False)),
        ),
    )
    return best_path, report_path


def param_importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances of the params; empty with fewer than 2 complete trials."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError) as error:  # e.g. every trial had the same params
        log.info("no parameter importances: %s", error)
        return {}


def _parent_run(cfg: Config, study: optuna.Study, name: str, tune: TuneConfig) -> str | None:
    """The study's MLflow run (created once, reopened on resume); its id is kept in the study."""
    from mlsmith.tracking import Tracker

    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    if parent_id or not cfg.track.enabled:
        return parent_id
    tracker = Tracker(cfg.track, output_dir=cfg.output_dir, experiment=cfg.experiment)
    params = {f"tune.{k}": v for k, v in tune.model_dump(mode="json", exclude={"space"}).items()}
    params.update({f"space.{k}": json.dumps(v.model_dump()) for k, v in tune.space.items()})
    run_id = tracker.start(run_name=f"tune-{name}", params=params, tags={"mlsmith.study": name})
    if run_id:
        study.set_user_attr("mlflow_parent_run_id", run_id)
    return run_id


def _finish_parent(cfg: Config, run_id: str | None, result: TuneResult) -> None:
    from mlsmith.tracking import Tracker

    tracker = Tracker.reopen(cfg, run_id)
    if tracker is None:
        return
    metrics: dict[str, float] = {f"trials/{k.lower()}": v for k, v in result.counts.items()}
    if result.best_value is not None:
        metrics[f"best/{result.metric}"] = result.best_value
        tracker.set_tags({"mlsmith.best_trial": str(result.best_trial)})
    tracker.log_metrics(metrics)
    tracker.log_artifacts([p for p in (result.best_config, result.report) if p is not None])
    tracker.finish("FINISHED")


def read_best(path: Path) -> dict[str, Any]:
    """``best.yaml`` as a dict (for tests and tools)."""
    loaded = yaml.safe_load(path.read_text())
    return loaded if isinstance(loaded, dict) else {}
