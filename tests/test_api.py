"""The Python API end to end: mlsmith.train -> Run, the run directory, evaluate, predict, load."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from tests.conftest import config_dict, make_table

import mlsmith
from mlsmith.config import load_config
from mlsmith.evaluation import CLASSIFICATION_METRICS, REGRESSION_METRICS

KINDS = ("binary", "multiclass", "regression")
EPOCHS = 3
HEADLINE = {
    "binary": ("accuracy", "roc_auc", "f1_macro", "log_loss"),
    "multiclass": ("accuracy", "roc_auc", "f1_macro", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny trained run per task kind, shared by the read-only tests below."""
    root = tmp_path_factory.mktemp("api")
    trained: dict[str, Any] = {"root": root}
    for kind in KINDS:
        data = root / f"{kind}.csv"
        make_table(kind).to_csv(data, index=False)
        config = config_dict(data, root / "runs", experiment=f"api-{kind}")
        trained[kind] = mlsmith.train(config, progress=False)
    return trained


@pytest.mark.parametrize("kind", KINDS)
def test_run_directory_layout(runs: dict[str, Any], kind: str) -> None:
    run = runs[kind]
    assert isinstance(run, mlsmith.Run)
    # <output_dir>/<experiment>/<run-id>/
    assert run.path.parent == (runs["root"] / "runs" / f"api-{kind}").resolve()
    assert run.id == run.path.name
    names = {p.name for p in run.path.iterdir()}
    expected = {"config.yaml", "run.json", "history.csv", "preprocessing.json", "metrics.json"}
    assert expected <= names
    assert ("confusion_matrix.json" in names) == (kind != "regression")
    assert {p.name for p in (run.path / "checkpoints").iterdir()} >= {"best.pt", "last.pt"}
    assert not [n for n in names if n.endswith(".tmp")], "temporary files left behind"


def test_config_is_resolved_and_reloadable(runs: dict[str, Any]) -> None:
    run = runs["binary"]
    stored = yaml.safe_load((run.path / "config.yaml").read_text())
    # Fully resolved: defaults written out, not only what the dict gave.
    assert stored["train"]["optimizer"]["lr"] == pytest.approx(1e-3)
    assert stored["train"]["early_stopping"]["patience"] == 10
    assert Path(stored["data"]["path"]).is_absolute()
    assert Path(stored["data"]["path"]) == (runs["root"] / "binary.csv").resolve()
    reloaded = load_config(run.path / "config.yaml")
    assert reloaded == run.config
    assert reloaded.train.epochs == EPOCHS
    assert mlsmith.load_run(run.path).config == run.config


@pytest.mark.parametrize("kind", KINDS)
def test_run_json_records_a_finished_run(runs: dict[str, Any], kind: str) -> None:
    info = json.loads((runs[kind].path / "run.json").read_text())
    assert info["status"] == "finished"
    assert info["id"] == runs[kind].id
    assert info["experiment"] == f"api-{kind}"
    assert info["epochs_run"] == EPOCHS
    assert 1 <= info["best_epoch"] <= EPOCHS
    assert info["finished"] >= info["started"]
    assert len(info["data_fingerprint"]) == 16
    assert info["data"]["task"] == kind
    assert sum(info["data"]["rows"].values()) == 240
    assert info["environment"]["mlsmith"] == mlsmith.__version__
    assert "torch" in info["environment"]["packages"]
    # Tracking was off: no MLflow run recorded.
    assert info["mlflow_run_id"] is None and info["tracking_uri"] is None


@pytest.mark.parametrize("kind", KINDS)
def test_history_has_one_row_per_epoch(runs: dict[str, Any], kind: str) -> None:
    history = pd.read_csv(runs[kind].path / "history.csv")
    names = CLASSIFICATION_METRICS if kind != "regression" else REGRESSION_METRICS
    columns = {"epoch", "train/loss", "val/loss", "lr", "samples_per_s"}
    columns |= {f"val/{name}" for name in names}
    assert columns <= set(history.columns)
    assert history["epoch"].tolist() == list(range(1, EPOCHS + 1))
    assert np.isfinite(history[["train/loss", "val/loss", "lr"]].to_numpy()).all()
    assert (history["lr"] > 0).all() and (history["samples_per_s"] > 0).all()
    pd.testing.assert_frame_equal(history, runs[kind].history)


@pytest.mark.parametrize("kind", KINDS)
def test_metrics_json_has_every_metric_with_intervals(runs: dict[str, Any], kind: str) -> None:
    metrics = json.loads((runs[kind].path / "metrics.json").read_text())
    assert set(metrics) == {"val", "test"}
    names = CLASSIFICATION_METRICS if kind != "regression" else REGRESSION_METRICS
    for split in ("val", "test"):
        assert set(metrics[split]) == set(names)
        for name, entry in metrics[split].items():
            assert set(entry) == {"value", "ci95"}, name
            assert len(entry["ci95"]) == 2
    for name in HEADLINE[kind]:
        entry = metrics["test"][name]
        low, high = entry["ci95"]
        assert low <= entry["value"] <= high, (name, entry)
        assert low < high, (name, entry)
    assert runs[kind].metrics == metrics


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_confusion_matrix_and_test_predictions(runs: dict[str, Any], kind: str) -> None:
    run = runs[kind]
    confusion = json.loads((run.path / "confusion_matrix.json").read_text())["test"]
    classes = ["no", "yes"] if kind == "binary" else ["hi", "lo", "mid"]
    assert confusion["labels"] == classes
    matrix = np.asarray(confusion["matrix"])
    test_rows = run.info["data"]["rows"]["test"]
    assert matrix.shape == (len(classes), len(classes))
    assert matrix.sum() == test_rows
    predictions = pd.read_csv(run.path / "test_predictions.csv")
    assert len(predictions) == test_rows
    assert list(predictions.columns) == ["target", "prediction"] + [f"proba_{c}" for c in classes]
    # The confusion matrix's diagonal counts exactly the correct predictions.
    correct = int((predictions["target"] == predictions["prediction"]).sum())
    assert np.trace(matrix) == correct
    accuracy = run.metrics["test"]["accuracy"]["value"]
    assert accuracy == pytest.approx(correct / test_rows)


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_reproduces_the_test_metrics(runs: dict[str, Any], kind: str) -> None:
    recorded = runs[kind].metrics["test"]
    again = mlsmith.load_run(runs[kind].path).evaluate()
    assert set(again) == {"test"}
    _assert_same(again["test"], recorded)
    # The module-level function takes a path.
    _assert_same(mlsmith.evaluate(runs[kind].path)["test"], recorded)


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name]["value"] == pytest.approx(b[name]["value"], rel=1e-9, abs=1e-12), name
        assert a[name]["ci95"] == pytest.approx(b[name]["ci95"], rel=1e-9, abs=1e-12), name


@pytest.mark.parametrize("kind", ["multiclass", "regression"])
def test_evaluate_scores_new_labelled_data(runs: dict[str, Any], kind: str, tmp_path: Path) -> None:
    # A copy: evaluating adds entries to metrics.json, which other tests read.
    run = mlsmith.load_run(shutil.copytree(runs[kind].path, tmp_path / "run"))
    other = make_table(kind, rows=80, seed=7)
    by_frame = run.evaluate(other)
    path = tmp_path / "other.csv"
    other.to_csv(path, index=False)
    by_path = run.evaluate(path)
    assert set(by_frame) == {"data:frame"} and set(by_path) == {"data:other.csv"}
    names = CLASSIFICATION_METRICS if kind != "regression" else REGRESSION_METRICS
    assert set(by_frame["data:frame"]) == set(names)
    _assert_same(by_frame["data:frame"], by_path["data:other.csv"])
    # Scored on the new rows, not the test split.
    headline = HEADLINE[kind][0]
    assert by_frame["data:frame"][headline] != run.metrics["test"][headline]
    if kind == "regression":
        truth = other["label"].to_numpy()
        predicted = run.predict(other)["prediction"].to_numpy()
        mse = float(np.mean((truth - predicted) ** 2))
        assert by_frame["data:frame"]["mse"]["value"] == pytest.approx(mse, rel=1e-6)
    # Results are recorded in metrics.json beside the training splits.
    stored = run.metrics
    assert {"val", "test", "data:frame", "data:other.csv"} <= set(stored)


def test_evaluate_refuses_data_that_changed_since_training(
    runs: dict[str, Any], tmp_path: Path
) -> None:
    run_dir = shutil.copytree(runs["binary"].path, tmp_path / "run")
    changed = make_table("binary")
    changed.loc[0, "x1"] += 1.0
    changed.to_csv(tmp_path / "changed.csv", index=False)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["data"]["path"] = str(tmp_path / "changed.csv")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(mlsmith.RunError, match="changed since this run was trained"):
        mlsmith.load_run(run_dir).evaluate()
    # The data given explicitly is still scored.
    assert "data:changed.csv" in mlsmith.load_run(run_dir).evaluate(tmp_path / "changed.csv")


def test_evaluate_without_labelled_rows_is_a_clear_error(runs: dict[str, Any]) -> None:
    frame = make_table("binary", rows=10, seed=3)
    frame["label"] = None
    with pytest.raises(mlsmith.RunError, match="no labelled rows"):
        runs["binary"].evaluate(frame)


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_predict_classification(runs: dict[str, Any], kind: str) -> None:
    run = runs[kind]
    frame = make_table(kind, rows=50, seed=5).drop(columns="label")
    frame.index = range(100, 150)  # predictions keep the input's index
    out = run.predict(frame)
    classes = run.model.task.classes
    assert list(out.columns) == ["prediction"] + [f"proba_{c}" for c in classes]
    assert out.index.equals(frame.index)
    proba = out[[f"proba_{c}" for c in classes]].to_numpy()
    assert ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    expected = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    assert out["prediction"].tolist() == expected.tolist()
    assert set(out["prediction"]) <= set(classes)


def test_predict_regression_returns_values_in_target_units(runs: dict[str, Any]) -> None:
    frame = make_table("regression", rows=50, seed=5)
    out = runs["regression"].predict(frame.drop(columns="label"))
    assert list(out.columns) == ["prediction"]
    values = out["prediction"].to_numpy()
    assert values.dtype.kind == "f" and np.isfinite(values).all()
    # Decoded to the target's scale (mean ~10), not the standardized one the network learns.
    assert abs(values.mean() - frame["label"].mean()) < frame["label"].std()


@pytest.mark.parametrize("kind", KINDS)
def test_load_run_gives_the_same_predictions(runs: dict[str, Any], kind: str) -> None:
    frame = make_table(kind, rows=40, seed=9)
    first = runs[kind].predict(frame)
    loaded = mlsmith.load_run(runs[kind].path)
    assert loaded.path == runs[kind].path
    pd.testing.assert_frame_equal(loaded.predict(frame), first)
    by_function = mlsmith.predict(str(runs[kind].path), frame)
    assert isinstance(by_function, pd.DataFrame)
    pd.testing.assert_frame_equal(by_function, first)


def test_predict_tolerates_unseen_categories_gaps_and_extra_columns(runs: dict[str, Any]) -> None:
    frame = make_table("binary", rows=6, seed=2).drop(columns="label")
    frame["color"] = ["purple", None, "red", "green", "blue", "orange"]
    frame.loc[0, "x1"] = np.nan
    frame["unrelated"] = "x"
    out = runs["binary"].predict(frame)
    assert len(out) == 6
    assert out.notna().all().all()


def test_predict_on_no_rows_returns_an_empty_frame(runs: dict[str, Any]) -> None:
    frame = make_table("multiclass", rows=10).iloc[:0]
    out = runs["multiclass"].predict(frame)
    assert len(out) == 0
    assert list(out.columns) == ["prediction", "proba_hi", "proba_lo", "proba_mid"]


def test_predict_missing_feature_is_a_data_error(runs: dict[str, Any]) -> None:
    frame = make_table("binary", rows=5).drop(columns=["x2"])
    with pytest.raises(mlsmith.DataError, match="feature column 'x2' not found"):
        runs["binary"].predict(frame)


def test_predict_file_through_the_api(runs: dict[str, Any], tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    make_table("binary", rows=30, seed=4).to_csv(source, index=False)
    with pytest.raises(mlsmith.ConfigError, match="needs an output path"):
        mlsmith.predict(runs["binary"], source)
    rows = mlsmith.predict(runs["binary"], source, tmp_path / "out.csv", chunk_rows=7)
    assert rows == 30
    written = pd.read_csv(tmp_path / "out.csv")
    expected = runs["binary"].predict(pd.read_csv(source))
    assert written["prediction"].tolist() == expected["prediction"].tolist()


def test_train_from_yaml_with_overrides(table_csv: Any, write_config: Any, tmp_path: Path) -> None:
    config = write_config(table_csv("multiclass"))
    run = mlsmith.train(config, overrides=["train.epochs=2", "experiment=yaml-run"])
    assert run.path.parent == (tmp_path / "runs" / "yaml-run").resolve()
    assert run.config.train.epochs == 2
    assert len(run.history) == 2
    assert load_config(run.path / "config.yaml").experiment == "yaml-run"
    assert run.info["status"] == "finished"


def test_train_with_a_config_object(table_csv: Any, tmp_path: Path) -> None:
    raw = config_dict(table_csv("regression"), tmp_path / "runs", train={"epochs": 1})
    config = mlsmith.Config.model_validate(raw)
    run = mlsmith.train(config)
    assert run.config == load_config(config)
    assert len(run.history) == 1
    assert set(run.metrics["test"]) == set(REGRESSION_METRICS)
    # The Config given is not modified by training.
    assert config.train.epochs == 1 and config.experiment == "t"


def test_train_with_an_invalid_dict_raises_config_error(tmp_path: Path) -> None:
    raw = config_dict(tmp_path / "missing.csv", tmp_path / "runs", train={"epochz": 1})
    with pytest.raises(mlsmith.ConfigError, match="epochz"):
        mlsmith.train(raw)
    assert not (tmp_path / "runs").exists()


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_mlsmith_does_not_import_torch() -> None:
    result = _python(
        "import sys, mlsmith\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'mlflow' not in sys.modules, 'mlflow imported'\n"
        "assert mlsmith.__version__\n"
        "assert mlsmith.Config and 'torch' not in sys.modules\n"
    )
    assert result.returncode == 0, result.stderr


def test_cli_help_is_quick_and_does_not_import_torch() -> None:
    result = _python(
        "import sys\n"
        "from mlsmith.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'mlflow' not in sys.modules, 'mlflow imported'\n"
    )
    assert result.returncode == 0, result.stderr
    for verb in ("train", "evaluate", "predict"):
        assert verb in result.stdout
    script = Path(sys.executable).with_name("mlsmith")
    if not script.exists():
        pytest.skip("the mlsmith console script is not installed beside this interpreter")
    started = time.perf_counter()
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout
    # Importing torch alone takes seconds; --help must not pay for it.
    assert elapsed < 10, f"mlsmith --help took {elapsed:.1f}s"
