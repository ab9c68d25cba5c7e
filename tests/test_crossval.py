"""eval.cv: K-fold cross-validation on the training split (mlsmith.crossval).

The folds must partition the training split, never leak (each fold's preprocessing learnt
without its held-out rows), follow the split's kind (stratified, grouped, ordered in time),
and be recorded in metrics.json, run.json, the report and one nested MLflow run each.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pandas as pd
import pytest
import yaml
from tests.conftest import CliResult, config_dict, make_table

import mlsmith
from mlsmith.config import load_config
from mlsmith.crossval import FOLD_FILE, summarise
from mlsmith.errors import ConfigError
from mlsmith.reports.markdown import render_report
from mlsmith.reports.runinfo import load_record
from mlsmith.run import metrics_schema

LOGISTIC = {"type": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression"}


def _config(
    tmp_path: Path, frame: pd.DataFrame, model: dict[str, Any], **sections: Any
) -> dict[str, Any]:
    data = tmp_path / "data.csv"
    frame.to_csv(data, index=False)
    raw = config_dict(data, tmp_path / "runs", **sections)
    raw["model"] = model
    return raw


def _held_out(run_dir: Path, folds: int) -> list[list[int]]:
    return [
        json.loads((run_dir / "cv" / f"fold-{k}" / FOLD_FILE).read_text())["held_out_rows"]
        for k in range(1, folds + 1)
    ]


def test_folds_partition_the_training_split_stratified_without_leakage(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from mlsmith.pipeline import build

    frame = make_table("binary", rows=200, seed=1)
    raw = _config(
        tmp_path,
        frame,
        LOGISTIC,
        track={"enabled": True},
        eval={"bootstrap": 0, "report": False, "cv": {"folds": 4}},
    )
    run = mlsmith.train(raw)

    # metrics.json: cv -> held_out -> metric -> {mean, std, ci95, folds}, one value per fold.
    accuracy = run.metrics["cv"]["held_out"]["accuracy"]
    assert len(accuracy["folds"]) == 4
    assert accuracy["mean"] == pytest.approx(np.mean(accuracy["folds"]))
    assert accuracy["std"] == pytest.approx(np.std(accuracy["folds"], ddof=1))
    assert accuracy["ci95"][0] < accuracy["mean"] < accuracy["ci95"][1]
    assert set(run.metrics) == {"cv", "val", "test"}  # the test split is scored as usual
    jsonschema.validate(run.metrics, metrics_schema())
    assert run.info["cv"]["scheme"] == "stratified" and run.info["cv"]["final"] == "refit"

    # The held-out folds are disjoint and together exactly the training split's rows.
    train_rows = build(load_config(raw))[0].frames["train"].index
    held = _held_out(run.path, 4)
    assert sum(len(h) for h in held) == len(train_rows)
    assert set().union(*map(set, held)) == set(train_rows)
    # Stratified: each fold keeps the training split's share of 'yes'.
    share = (frame.loc[train_rows, "label"] == "yes").mean()
    for rows in held:
        assert abs((frame.loc[rows, "label"] == "yes").mean() - share) <= 1 / len(rows) + 0.01

    # No leakage: each fold's preprocessing was fitted on its training rows alone.
    for k, rows in enumerate(held, start=1):
        fitted = json.loads((run.path / "cv" / f"fold-{k}" / "preprocessing.json").read_text())
        fold_train = frame.loc[sorted(set(train_rows) - set(rows))]
        size = fitted["numeric"].index("size")
        assert fitted["means"][size] == pytest.approx(fold_train["size"].mean())
        assert fitted["means"][size] != pytest.approx(frame.loc[train_rows, "size"].mean())
        assert fitted["medians"][fitted["numeric"].index("x2")] == pytest.approx(
            fold_train["x2"].median()
        )

    # One nested MLflow run per fold, under the run's own, in the real SQLite store.
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    parent = run.info["mlflow_run_id"]
    experiment = client.get_experiment_by_name("t")
    assert experiment is not None
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    by_fold = {int(c.data.tags["mlsmith.cv_fold"]): c for c in children}
    assert sorted(by_fold) == [1, 2, 3, 4]
    for k, child in by_fold.items():
        assert child.info.status == "FINISHED"
        value = child.data.metrics["held_out/accuracy"]
        assert value == pytest.approx(accuracy["folds"][k - 1])
    parent_metrics = client.get_run(parent).data.metrics
    assert parent_metrics["cv/held_out/accuracy_mean"] == pytest.approx(accuracy["mean"])

    # The report shows the per-fold table (REPORT.md only: report.html's plots cost seconds).
    report = render_report(load_record(run.path))
    assert "## Cross-validation" in report and "| 4 | " in report and "stratified" in report


def test_grouped_folds_and_best_fold_keep_the_fold_model(tmp_path: Path) -> None:
    frame = make_table("regression", rows=180, seed=4)
    frame["site"] = np.arange(len(frame)) % 18
    raw = _config(
        tmp_path,
        frame,
        {"type": "sklearn", "params": {"max_iter": 20}},
        data={"split": {"group": "site"}},
        eval={"bootstrap": 0, "report": False, "cv": {"folds": 3, "final": "best_fold"}},
    )
    run = mlsmith.train(raw)

    info = run.info["cv"]
    assert info["scheme"] == "grouped by 'site'" and info["selected_on"] == "mse"
    held = _held_out(run.path, 3)
    groups = [set(frame.loc[rows, "site"]) for rows in held]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    # The kept fold has the lowest held-out MSE; its preprocessing and model are the run's.
    mse = run.metrics["cv"]["held_out"]["mse"]["folds"]
    kept = info["kept_fold"]
    assert mse[kept - 1] == min(mse)
    fold_dir = run.path / "cv" / f"fold-{kept}"
    assert (run.path / "preprocessing.json").read_text() == (
        fold_dir / "preprocessing.json"
    ).read_text()
    assert (run.path / "model" / "sklearn.skops").read_bytes() == (
        fold_dir / "model" / "sklearn.skops"
    ).read_bytes()
    assert len(run.history) == 1  # the kept fold's history, replayed into the run's
    assert mlsmith.load_run(run.path).evaluate()["test"] == run.metrics["test"]


def test_time_ordered_folds_train_only_on_the_past(tmp_path: Path) -> None:
    frame = make_table("binary", rows=160, seed=2)
    frame["day"] = np.random.default_rng(0).permutation(len(frame))
    raw = _config(
        tmp_path,
        frame,
        LOGISTIC,
        data={"split": {"time": "day"}},
        eval={"bootstrap": 0, "report": False, "cv": {"folds": 3}},
    )
    run = mlsmith.train(raw)

    held = _held_out(run.path, 3)
    days = [frame.loc[rows, "day"] for rows in held]
    assert days[0].max() < days[1].min() and days[1].max() < days[2].min()
    train_days = frame["day"].nsmallest(run.info["data"]["rows"]["train"])
    sizes = [s["train"] for s in run.info["cv"]["sizes"]]
    # Fold k trains on every training row earlier than its held-out block, nothing later.
    assert sizes == [int((train_days < d.min()).sum()) for d in days]
    assert sizes[0] < sizes[1] < sizes[2]


def test_torch_family_best_fold_replays_its_history(tmp_path: Path) -> None:
    raw = _config(
        tmp_path,
        make_table("multiclass", rows=120, seed=3),
        {"type": "mlp", "hidden": [8], "dropout": 0.0},
        train={"epochs": 2, "batch_size": 32},
        eval={"bootstrap": 0, "report": False, "cv": {"folds": 2, "final": "best_fold"}},
    )
    run = mlsmith.train(raw)

    kept = run.info["cv"]["kept_fold"]
    fold_history = pd.read_csv(run.path / "cv" / f"fold-{kept}" / "history.csv")
    pd.testing.assert_frame_equal(run.history, fold_history)
    assert run.info["epochs_run"] == 2
    frame = make_table("multiclass", rows=10, seed=8).drop(columns="label")
    pd.testing.assert_frame_equal(mlsmith.load_run(run.path).predict(frame), run.predict(frame))


def test_tune_optimises_the_cv_mean(tmp_path: Path) -> None:
    raw = _config(
        tmp_path,
        make_table("binary", rows=120, seed=5),
        LOGISTIC,
        eval={"bootstrap": 0, "report": False, "cv": {"folds": 2}},
        tune={
            "metric": "val/loss",
            "objective": "cv",
            "trials": 2,
            "space": {"model.params.C": {"type": "float", "low": 0.01, "high": 10.0, "log": True}},
        },
    )
    result = mlsmith.tune(raw)

    assert result.counts.get("COMPLETE") == 2
    values = []
    for trial in result.trials:
        metrics = json.loads((Path(trial.run_dir) / "metrics.json").read_text())
        values.append(metrics["cv"]["held_out"]["log_loss"]["mean"])  # val/loss under CV
    assert result.best_value == pytest.approx(min(values))


def test_summary_interval_is_student_t_over_the_folds() -> None:
    summary = summarise([{"a": 1.0}, {"a": 2.0}, {"a": 3.0}, {"a": float("nan")}])

    entry = summary["a"]
    # t(0.975, 2) = 4.3027; std 1; three defined folds.
    assert entry["mean"] == 2.0 and entry["std"] == 1.0
    assert entry["ci95"] == pytest.approx([2 - 4.3027 / 3**0.5, 2 + 4.3027 / 3**0.5], abs=1e-4)
    assert entry["folds"] == [1.0, 2.0, 3.0, None]


def test_cv_config_errors_exit_2(
    cli: Callable[..., CliResult], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    data = tmp_path / "small.csv"
    make_table("binary", rows=40).to_csv(data, index=False)

    too_few = cli("train", write_config(data), "eval.cv.folds=1")
    assert too_few.code == 2 and "eval.cv.folds" in too_few.stderr

    too_many = cli("train", write_config(data), "eval.cv.folds=100", "data.split.stratify=false")
    assert too_many.code == 2 and "eval.cv: cannot cut" in too_many.stderr
    assert not (tmp_path / "runs" / "t").exists(), "no run directory for a data error"

    raw = config_dict(data, tmp_path / "runs")
    raw["tune"] = {"objective": "cv", "space": {"seed": {"type": "int", "low": 0, "high": 3}}}
    with pytest.raises(ConfigError, match=r"tune\.objective: cv .* needs eval\.cv"):
        mlsmith.tune(raw)

    config = write_config(data, "cv.yaml", eval={"report": False, "cv": {"folds": 2}})
    trained = cli("train", config, "--no-progress")
    assert trained.code == 0, trained.stderr
    assert "cv mean" in trained.stdout  # the folds' means, a column beside val and test
    run_dir = trained.stdout.strip().splitlines()[-1]
    resumed = cli("train", config, "--resume", run_dir)
    assert resumed.code == 2 and "cannot be resumed" in resumed.stderr
    assert yaml.safe_load(Path(run_dir, "config.yaml").read_text())["eval"]["cv"]["folds"] == 2
