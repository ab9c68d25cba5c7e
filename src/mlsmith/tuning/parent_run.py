"""The study's MLflow run: the parent of every trial's run, and where the study's result goes.

Created once per study (its id is kept in the study), reopened as RUNNING when the study
resumes, ended KILLED when the study is interrupted and FINISHED when the study completes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from mlsmith.config import Config, TuneConfig
from mlsmith.tuning.results import TuneResult
from mlsmith.tuning.storage import StudyStorage

if TYPE_CHECKING:
    import optuna

PARENT_ATTR = "mlflow_parent_run_id"


def open_parent_run(
    cfg: Config, study: optuna.Study, store: StudyStorage, tune: TuneConfig
) -> str | None:
    """The study's MLflow run id: created if the study has none, else reopened as RUNNING;
    None when tracking is off or fails."""
    from mlsmith.tracking import Tracker

    if not cfg.track.enabled:
        return None
    name = study.study_name
    # Connecting may build the MLflow store (seconds): before taking the study's lock.
    tracker = Tracker(cfg.track, output_dir=cfg.output_dir, experiment=cfg.experiment)
    # Under the lock, so that two leaders starting together create one run, not one each.
    with store.lock():
        parent_id = study.user_attrs.get(PARENT_ATTR)
        if parent_id:
            return tracker.start(run_name=f"tune-{name}", params={}, tags={}, resume_id=parent_id)
        params = {
            f"tune.{k}": v for k, v in tune.model_dump(mode="json", exclude={"space"}).items()
        }
        params.update({f"space.{k}": json.dumps(v.model_dump()) for k, v in tune.space.items()})
        run_id = tracker.start(run_name=f"tune-{name}", params=params, tags={"mlsmith.study": name})
        if run_id:
            study.set_user_attr(PARENT_ATTR, run_id)
        return run_id


def finish_parent_run(cfg: Config, run_id: str | None, result: TuneResult) -> None:
    """Log the study's counts, best value and files on its run, and end it FINISHED."""
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


def end_parent_run(cfg: Config, run_id: str | None, status: str) -> None:
    """End the study's run early: KILLED when interrupted, FAILED on an error."""
    from mlsmith.tracking import Tracker

    tracker = Tracker.reopen(cfg, run_id)
    if tracker is not None:
        tracker.finish(status)
