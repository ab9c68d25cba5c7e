"""The baseline fitted beside every model: correct (scikit-learn directly on the same rows gives
the same outputs), fairly tuned (its C is the validation-best of the grid), scored with a paired
interval, reported, and a clear observation when the model does not beat it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import OneHotEncoder
from tests.conftest import config_dict, make_table
from tests.image_data import make_images, write_npz
from tests.text_data import make_texts

from mlsmith import train
from mlsmith.baselines import C_GRID, fit_baseline
from mlsmith.config import load_config
from mlsmith.evaluation import paired_difference, paired_differences
from mlsmith.pipeline import build
from mlsmith.run import metrics_schema


def _table_features(split: object, onehot: OneHotEncoder) -> np.ndarray:
    inputs = split.inputs  # type: ignore[attr-defined]
    return np.hstack([inputs["numeric"], onehot.transform(inputs["categorical"]).toarray()])


def _log_loss(truth: np.ndarray, proba: np.ndarray) -> float:
    picked = np.clip(proba[np.arange(len(truth)), truth], 1e-15, 1 - 1e-15)
    return float(-np.mean(np.log(picked)))


def test_table_baseline_is_sklearn_on_the_same_rows_with_the_validation_best_c(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.csv"
    make_table("multiclass", rows=400).to_csv(path, index=False)
    data, _ = build(load_config(config_dict(path, tmp_path / "runs")))
    baseline = fit_baseline(data, seed=0)
    assert baseline is not None and baseline.params["features"] == "the preprocessed table"

    onehot = OneHotEncoder(handle_unknown="ignore").fit(data.train.inputs["categorical"])
    x_train, x_val, x_test = (_table_features(s, onehot) for s in (data.train, data.val, data.test))
    y_train, y_val = data.train.target, data.val.target
    # The grid's validation-best C, found independently (cold starts, not warm ones).
    losses = {
        c: _log_loss(
            y_val, LogisticRegression(C=c, max_iter=1000).fit(x_train, y_train).predict_proba(x_val)
        )
        for c in C_GRID
    }
    assert baseline.params["C"] == min(losses, key=losses.__getitem__)
    direct = LogisticRegression(C=baseline.params["C"], max_iter=1000).fit(x_train, y_train)
    np.testing.assert_allclose(
        baseline.outputs["test"], direct.predict_proba(x_test), rtol=1e-6, atol=1e-9
    )
    # The majority "model": the training prior on every row.
    prior = np.bincount(y_train, minlength=3) / len(y_train)
    np.testing.assert_allclose(baseline.majority["test"], np.tile(prior, (len(x_test), 1)))


def test_regression_baseline_is_ridge_and_the_mean(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    make_table("regression", rows=300).to_csv(path, index=False)
    data, _ = build(load_config(config_dict(path, tmp_path / "runs")))
    baseline = fit_baseline(data, seed=0)
    assert baseline is not None and baseline.name.startswith("ridge regression")
    onehot = OneHotEncoder(handle_unknown="ignore").fit(data.train.inputs["categorical"])
    truth = data.task.truth(data.train.target)
    direct = Ridge(alpha=baseline.params["alpha"]).fit(_table_features(data.train, onehot), truth)
    expected = direct.predict(_table_features(data.test, onehot))
    np.testing.assert_allclose(baseline.outputs["test"], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(baseline.majority["test"], truth.mean())


def test_text_baseline_is_tfidf_and_logistic_regression_on_the_raw_texts(tmp_path: Path) -> None:
    path = tmp_path / "texts.csv"
    make_texts("binary", rows=240).to_csv(path, index=False)
    config = config_dict(path, tmp_path / "runs", data={"type": "text"})
    config["model"] = {"type": "bag", "dim": 4}
    cfg = load_config(config)
    data, _ = build(cfg)
    baseline = fit_baseline(data, text_column="text", seed=0)
    assert baseline is not None and baseline.params["features"].startswith("TF-IDF")
    frames = data.frames
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2)
    x_train = vectorizer.fit_transform(frames["train"]["text"])
    direct = LogisticRegression(C=baseline.params["C"], max_iter=1000).fit(
        x_train, data.train.target.astype(int)
    )
    expected = direct.predict_proba(vectorizer.transform(frames["test"]["text"]))
    np.testing.assert_allclose(baseline.outputs["test"], expected, rtol=1e-6, atol=1e-9)


def test_image_baseline_on_downsampled_pixels(tmp_path: Path) -> None:
    images, labels = make_images(n_per_class=30, classes=3, size=(20, 20))
    path = write_npz(tmp_path / "images.npz", images, labels)
    cfg = load_config(
        {
            "seed": 0,
            "output_dir": str(tmp_path / "runs"),
            "data": {"type": "image", "path": str(path)},
            "model": {"type": "cnn", "channels": [4], "depth": 1},
        }
    )
    data, _ = build(cfg)
    baseline = fit_baseline(data, seed=0)
    assert baseline is not None
    assert baseline.params["features"] == "pixels averaged down to at most 16x16"
    accuracy = (baseline.outputs["val"].argmax(1) == data.val.target).mean()
    assert accuracy > 0.8  # the generated classes sit at different places: linearly separable


def test_paired_differences_agree_with_the_one_metric_version() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    a = np.column_stack([1 - (p := np.clip(y * 0.6 + rng.random(300) * 0.4, 0, 1)), p])
    b = np.column_stack([1 - (q := rng.random(300)), q])
    every = paired_differences("binary", y, a, b, n_resamples=300, seed=3)
    for metric in ("accuracy", "roc_auc", "log_loss"):
        value_a, value_b, diff, low, high = paired_difference(
            "binary", y, a, b, metric, n_resamples=300, seed=3
        )
        entry = every[metric]
        assert entry["a"] == pytest.approx(value_a) and entry["b"] == pytest.approx(value_b)
        assert entry["value"] == pytest.approx(diff)
        assert entry["ci95"] == pytest.approx([low, high])
    assert every["accuracy"]["ci95"][0] > 0  # a is clearly better than coin flips


def test_a_run_reports_its_baseline_everywhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.csv"
    make_table("binary", rows=400).to_csv(path, index=False)
    # One epoch at a tiny learning rate: the network has learnt next to nothing, while the
    # linear baseline gets the (linear) signal: the run must say so.
    config = config_dict(
        path,
        tmp_path / "runs",
        train={"epochs": 1, "optimizer": {"lr": 1e-5}},
        eval={"bootstrap": 200, "report": True, "baseline": True},
        track={"enabled": True},
    )
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(config))
    with caplog.at_level(logging.WARNING):
        run = train(config_file)
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert {"val", "test", "baseline", "majority", "vs_baseline"} <= set(metrics)
    jsonschema.validate(metrics, metrics_schema())
    assert set(metrics["baseline"]) == {"val", "test"}
    difference = metrics["vs_baseline"]["test"]["accuracy"]
    assert difference["value"] == pytest.approx(difference["a"] - difference["b"])
    assert difference["a"] == pytest.approx(metrics["test"]["accuracy"]["value"])
    assert difference["b"] == pytest.approx(metrics["baseline"]["test"]["accuracy"]["value"])
    assert difference["ci95"][1] < 0  # clearly worse than the baseline
    test_rows = pd.read_csv(run.path / "test_predictions.csv")
    majority_share = test_rows["target"].value_counts(normalize=True).max()
    assert metrics["majority"]["test"]["accuracy"]["value"] <= majority_share + 1e-9

    info = json.loads((run.path / "run.json").read_text())
    assert info["baseline"]["beats"] is False and info["baseline"]["split"] == "test"
    assert any("does not beat its baseline" in o for o in info["observations"])
    assert "does not beat its baseline" in caplog.text
    report = (run.path / "REPORT.md").read_text()
    assert "## Model vs baseline" in report and "logistic regression" in report
    assert "Compared with a baseline" in (run.path / "MODEL_CARD.md").read_text()
    assert "Model vs baseline" in (run.path / "report.html").read_text()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=info["tracking_uri"])
    logged = client.get_run(info["mlflow_run_id"]).data.metrics
    assert logged["baseline/test/accuracy"] == pytest.approx(difference["b"])
    assert "vs_baseline/test/accuracy_ci95_low" in logged


def test_baseline_off_and_the_cli_table(tmp_path: Path, cli: object) -> None:
    path = tmp_path / "t.csv"
    make_table("binary", rows=200).to_csv(path, index=False)
    config_file = tmp_path / "c.yaml"
    config = config_dict(path, tmp_path / "runs", eval={"baseline": True})
    config_file.write_text(yaml.safe_dump(config))
    result = cli("train", config_file)  # type: ignore[operator]
    assert result.code == 0, result.stderr
    assert "model vs baseline" in result.stdout, result.stdout
    assert "majority" in result.stdout

    result = cli("train", config_file, "eval.baseline=false")  # type: ignore[operator]
    assert result.code == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    assert set(json.loads((run_dir / "metrics.json").read_text())) == {"val", "test"}
    assert "baseline" not in json.loads((run_dir / "run.json").read_text())
    assert "model vs baseline" not in result.stdout

    result = cli("train", config_file, "eval.baseline=maybe")  # type: ignore[operator]
    assert result.code == 2 and "eval.baseline" in result.stderr


def test_the_metrics_schema_rejects_what_readers_could_not_read() -> None:
    schema = metrics_schema()
    good = {
        "test": {"accuracy": {"value": 0.9, "ci95": [0.85, 0.95]}, "r2": {"value": None}},
        "vs_baseline": {"test": {"accuracy": {"value": 0.1, "a": 0.9, "b": 0.8}}},
        "cv": {"val": {"accuracy": {"mean": 0.9, "std": 0.01, "folds": [0.89, 0.91]}}},
    }
    jsonschema.validate(good, schema)
    for bad in (
        {"test": {"accuracy": {"value": "0.9"}}},  # a string
        {"test": {"accuracy": {"value": 0.9, "ci95": [0.8]}}},  # half an interval
        {"test": {"accuracy": 0.9}},  # a bare number
        {"vs_baseline": {"test": {"accuracy": {"value": 0.1}}}},  # no a / b
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_the_difference_uses_the_models_decision_threshold(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    make_table("binary", rows=300).to_csv(path, index=False)
    config = config_dict(path, tmp_path / "runs", eval={"baseline": True, "threshold": "auto"})
    run = train(config)
    metrics = json.loads((run.path / "metrics.json").read_text())
    jsonschema.validate(metrics, metrics_schema())
    assert metrics["test"]["threshold"]["chosen_on"] == "val"
    # The model's side of the comparison is its own thresholded accuracy.
    model_side = metrics["vs_baseline"]["test"]["accuracy"]["a"]
    assert model_side == pytest.approx(metrics["test"]["accuracy"]["value"])
