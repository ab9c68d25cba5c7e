"""The study's MLflow run: KILLED when the study is interrupted, reopened and FINISHED when the
same command resumes and completes it."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from tests.tuning.tune_data import LR_SPACE, tune_config


def _study_runs(tmp_path: Path) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("t")
    assert experiment is not None
    return list(client.search_runs([experiment.experiment_id], "tags.`mlsmith.study` = 't'"))


def test_interrupted_study_kills_its_run_and_resuming_finishes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlsmith
    import mlsmith.pipeline
    from mlsmith.errors import Interrupted

    cfg = tune_config(tmp_path, {"train.optimizer.lr": LR_SPACE}, trials=2, pruner="none")
    cfg["track"] = {"enabled": True}
    train = mlsmith.pipeline.run_training
    calls: list[int] = []

    def ctrl_c_in_second_trial(config: Any, **kwargs: Any) -> Any:
        calls.append(len(calls))
        if len(calls) == 2:
            raise Interrupted(signal.SIGINT)
        return train(config, **kwargs)

    monkeypatch.setattr(mlsmith.pipeline, "run_training", ctrl_c_in_second_trial)
    with pytest.raises(KeyboardInterrupt):
        mlsmith.tune(cfg)
    runs = _study_runs(tmp_path)
    assert [r.info.status for r in runs] == ["KILLED"], "an interrupted study's run must end"

    result = mlsmith.tune(cfg)
    assert result.counts["COMPLETE"] == 2 and result.counts["INTERRUPTED"] == 1, result.counts
    resumed = _study_runs(tmp_path)
    # The same run, reopened: one study, one run.
    assert [(r.info.run_id, r.info.status) for r in resumed] == [(runs[0].info.run_id, "FINISHED")]
    assert resumed[0].data.metrics["trials/interrupted"] == 1
    assert resumed[0].data.metrics["trials/complete"] == 2
