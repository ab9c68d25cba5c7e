"""The study loop: open (or resume) a study, run its trials until the budget is spent, write the
results.

A study is a fixed budget of trials in an Optuna storage (see ``storage`` and ``trial_queue``).
The leading process (``worker_index`` 0) queues the budget, starts local helper processes if
asked, runs queued trials, then waits for the trials other processes still run: one whose
process died is failed for its stale heartbeat and queued again, and the leader runs it. When
nothing is left it writes ``best.yaml`` and the report and ends the MLflow parent run. Helpers
(``worker_index`` > 0) run queued trials until none is left and write nothing.

Ctrl-C or SIGTERM marks the trial in progress as an interrupted attempt, to be re-queued, and
the parent run KILLED; the same command resumes the study and runs exactly the rest.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsmith import interrupts
from mlsmith.config import Config
from mlsmith.errors import ConfigError, MlsmithError
from mlsmith.files import write_text
from mlsmith.training.callbacks import resolve_mode
from mlsmith.tuning.parent_run import (
    PARENT_ATTR,
    end_parent_run,
    finish_parent_run,
    open_parent_run,
)
from mlsmith.tuning.results import TuneResult, build_result, study_folder, write_outputs
from mlsmith.tuning.samplers import build_pruner, build_sampler, grid_points
from mlsmith.tuning.space import tune_section
from mlsmith.tuning.storage import GRACE_S, StudyStorage, default_storage, heartbeat, open_storage
from mlsmith.tuning.trial import run_trial
from mlsmith.tuning.trial_queue import (
    claim_waiting_trial,
    fail_trial,
    queue_budget,
    requeue_interrupted,
)

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

BASE_FILE = "base.yaml"
# How often the leader looks at the trials other processes run, once the queue is empty.
POLL_S = 1.0


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

    ``trials`` (default ``tune.trials``) trials finish in all, across every process; interrupted
    attempts are run again and counted apart. ``worker_index`` > 0 marks a helper process
    started by another: it runs queued trials and returns without writing best.yaml or the
    report.
    """
    import optuna

    tune = tune_section(cfg)
    if cfg.data.type == "timeseries" and getattr(cfg.data, "windows", 1) < 2:
        raise ConfigError(
            "mlsmith tune: a forecast is tuned on its validation windows, and data.windows is "
            "1 (the test window only); set data.windows to 2 or more"
        )
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
    leader = worker_index == 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with open_storage(url) as store:
        with store.lock():
            created = optuna.create_study(
                study_name=name, storage=store.backend, direction=direction, load_if_exists=True
            )
        if created.direction.name.lower() != direction:
            raise ConfigError(
                f"study '{name}' in {url} was created to {created.direction.name.lower()}, "
                f"the config asks to {direction}; use another --study name"
            )
        # A process that resumes must not replay the first trials' random draws.
        seed = cfg.seed if tune.seed is None else tune.seed
        seed += 1000 * worker_index + len(created.get_trials(deepcopy=False))
        sampler = build_sampler(tune, seed)
        pruner = build_pruner(tune, cfg.train.epochs)
        # A grid queues its points (the same order in every process), at most one trial each.
        points = None
        budget = tune.trials
        if tune.sampler == "grid":
            points = grid_points(tune, cfg.seed if tune.seed is None else tune.seed)
            budget = min(budget, len(points))
        if leader:
            queue_budget(store, created, budget, points)
            parent_run_id = open_parent_run(cfg, created, store, tune)
        else:
            parent_run_id = created.user_attrs.get(PARENT_ATTR)

        helpers: list[subprocess.Popen[bytes]] = []
        if workers > 1 and leader:
            base = folder / BASE_FILE
            write_text(base, cfg.to_yaml())
            helpers = [_start_worker(base, url, name, i, timeout) for i in range(1, workers)]
        deadline = None if timeout is None else time.monotonic() + timeout
        first = True
        try:
            while True:
                trial_id = claim_waiting_trial(store, name) if _before(deadline) else None
                if trial_id is None:
                    if leader and _await_others(store, created, budget, deadline, points):
                        continue
                    break
                try:
                    # A fresh Study per trial: Optuna caches the trial list inside a Study object.
                    current = optuna.load_study(
                        study_name=name, storage=store.backend, sampler=sampler, pruner=pruner
                    )
                    with heartbeat(store.backend, trial_id):
                        run_trial(
                            current,
                            trial_id,
                            cfg,
                            tune,
                            direction,
                            parent_run_id=parent_run_id,
                            preflight=first and cfg.train.preflight,
                        )
                except BaseException as error:
                    signum = interrupts.interruption(error)
                    if signum is not None:
                        # The signal may land anywhere (loading, sampling, training, telling,
                        # inside a library that wraps it): a claimed trial must neither stay
                        # RUNNING nor spend the budget.
                        reason = f"interrupted by {signal.Signals(signum).name}"
                        requeue_interrupted(store.backend, trial_id, reason)
                    elif isinstance(error, Exception):  # a bug, or an unknown tune.metric
                        fail_trial(store.backend, trial_id, _describe(error))
                    raise
                first = False
            for helper in helpers:
                helper.wait()
        except BaseException as error:
            for helper in helpers:
                helper.terminate()
            if leader:
                stopped = interrupts.interruption(error) is not None
                end_parent_run(cfg, parent_run_id, "KILLED" if stopped else "FAILED")
            raise
        if not leader:
            return build_result(created, tune, url=url, direction=direction, folder=folder)
        best_path, report_path = write_outputs(created, cfg, tune, folder, direction)
        result = build_result(
            created,
            tune,
            url=url,
            direction=direction,
            folder=folder,
            best_path=best_path,
            report_path=report_path,
        )
        finish_parent_run(cfg, parent_run_id, result)
        return result


def _describe(error: Exception) -> str:
    return str(error) if isinstance(error, MlsmithError) else repr(error)


def _before(deadline: float | None) -> bool:
    return deadline is None or time.monotonic() < deadline


def _await_others(
    store: StudyStorage,
    study: optuna.Study,
    budget: int,
    deadline: float | None,
    points: list[dict[str, Any]] | None = None,
) -> bool:
    """Wait while other processes run trials; True as soon as one is queued again to run here
    (before the deadline), False once none is running.

    Each look fails stale trials and tops the queue up, so an attempt another process lost
    (killed, or interrupted) is run again here.
    """
    from optuna.trial import TrialState

    while True:
        queue_budget(store, study, budget, points)
        trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
        if _before(deadline) and any(t.state == TrialState.WAITING for t in trials):
            return True
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if not running:
            return False
        if deadline is not None and time.monotonic() > deadline + GRACE_S:
            log.warning("%d trials still running in other processes", len(running))
            return False
        time.sleep(POLL_S)


def _start_worker(
    base: Path, url: str, name: str, index: int, timeout: float | None
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "mlsmith", "tune", str(base), "--storage", url]
    command += ["--study", name, "--worker-index", str(index)]
    if timeout is not None:
        command += ["--timeout", str(timeout)]
    return subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
