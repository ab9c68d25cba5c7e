"""model.type sklearn: any scikit-learn-style estimator, end to end (CLI and Python API).

The family's contract (fit, predict, save, load) is tests/models/test_contract.py's; here: the
commands, the estimator and params errors, safe loading, packaging and tuning params.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from tests.conftest import CliResult, config_dict, make_table

import mlsmith
from mlsmith.config import load_config
from mlsmith.errors import ConfigError, RunError
from mlsmith.models.estimators import MODEL_DIR, MODEL_FILE, SklearnModel

LOGISTIC = "sklearn.linear_model.LogisticRegression"


def _config(tmp_path: Path, kind: str, model: dict[str, Any], **sections: Any) -> dict[str, Any]:
    data = tmp_path / f"{kind}.csv"
    make_table(kind, rows=160, seed=2).to_csv(data, index=False)
    raw = config_dict(data, tmp_path / "runs", **sections)
    raw["model"] = {"type": "sklearn", **model}
    return raw


def test_cli_train_evaluate_predict_with_logistic_regression(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    raw = _config(tmp_path, "binary", {"estimator": LOGISTIC, "params": {"C": 0.5}})
    config = tmp_path / "sk.yaml"
    config.write_text(yaml.safe_dump(raw))

    trained = cli("train", config, "--no-progress", "model.params.max_iter=300")
    assert trained.code == 0, trained.stderr
    run_dir = Path(trained.stdout.strip().splitlines()[-1])
    assert (run_dir / MODEL_DIR / MODEL_FILE).is_file()
    assert load_config(run_dir / "config.yaml").model.params == {"C": 0.5, "max_iter": 300}
    test_accuracy = json.loads((run_dir / "metrics.json").read_text())["test"]["accuracy"]
    assert test_accuracy["value"] > 0.75

    evaluated = cli("evaluate", run_dir, "--json")
    assert evaluated.code == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test"]["accuracy"] == test_accuracy

    rows = tmp_path / "rows.csv"
    make_table("binary", rows=12, seed=5).drop(columns="label").to_csv(rows, index=False)
    output = tmp_path / "predicted.csv"
    predicted = cli("predict", run_dir, "--input", rows, "--output", output)
    assert predicted.code == 0, predicted.stderr
    frame = pd.read_csv(output)
    assert len(frame) == 12 and set(frame["prediction"]) <= {"yes", "no"}
    np.testing.assert_allclose(frame["proba_no"] + frame["proba_yes"], 1.0, atol=1e-9)


@pytest.mark.parametrize(
    ("kind", "estimator"),
    [
        ("multiclass", "sklearn.ensemble.HistGradientBoostingClassifier"),
        ("regression", "auto"),  # HistGradientBoostingRegressor
    ],
)
def test_python_api_trains_hist_gradient_boosting_natively_on_categories(
    kind: str, estimator: str, tmp_path: Path
) -> None:
    raw = _config(tmp_path, kind, {"estimator": estimator, "params": {"max_iter": 30}})
    run = mlsmith.train(raw)

    model = run.model
    assert isinstance(model, SklearnModel) and model.encoding == "native"
    assert type(model.estimator).__name__.startswith("HistGradientBoosting")
    # The categorical column ('color', after the 3 numerics) is split on natively.
    assert list(model.estimator.get_params()["categorical_features"]) == [False] * 3 + [True]
    assert model.estimator.get_params()["random_state"] == raw["seed"]
    history = run.history
    assert len(history) == 1 and {"train/loss", "val/loss"} <= set(history.columns)
    headline = "accuracy" if kind == "multiclass" else "r2"
    assert run.metrics["test"][headline]["value"] > 0.5

    frame = make_table(kind, rows=20, seed=9).drop(columns="label")
    reloaded = mlsmith.load_run(run.path).predict(frame)
    pd.testing.assert_frame_equal(reloaded, run.predict(frame))


def test_an_estimator_from_another_package_trains_and_reloads(tmp_path: Path) -> None:
    """lightgbm's scikit-learn wrapper: its parameters are not checked by scikit-learn's
    validation, and its saved types (lightgbm's own) are trusted on load."""
    pytest.importorskip("lightgbm")
    model = {"estimator": "lightgbm.LGBMClassifier", "params": {"n_estimators": 10, "verbose": -1}}
    run = mlsmith.train(_config(tmp_path, "binary", model))

    assert run.metrics["test"]["accuracy"]["value"] > 0.6
    assert mlsmith.load_run(run.path).evaluate()["test"] == run.metrics["test"]


def test_one_hot_encoding_for_estimators_without_native_categories(tmp_path: Path) -> None:
    run = mlsmith.train(_config(tmp_path, "multiclass", {"estimator": LOGISTIC}))

    model = run.model
    assert isinstance(model, SklearnModel) and model.encoding == "onehot"
    inputs = {"numeric": np.zeros((2, 3)), "categorical": np.array([[0], [2]])}
    matrix = model.matrix(inputs)
    # 3 numerics, then one column per colour and one for colours never seen in training.
    assert matrix.shape == (2, 3 + 4)
    np.testing.assert_array_equal(matrix[:, 3:], [[1, 0, 0, 0], [0, 0, 1, 0]])


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({"estimator": "sklearn.linear_model.NoSuch"}, r"model\.estimator: .*no 'NoSuch'"),
        ({"estimator": "nosuchpackage.Model"}, r"model\.estimator: cannot import module"),
        ({"estimator": "LogisticRegression"}, r"model\.estimator: expected the dotted path"),
        ({"estimator": "sklearn.metrics.accuracy_score"}, r"model\.estimator: .* not a class"),
        ({"estimator": "sklearn.preprocessing.StandardScaler"}, r"model\.estimator: .*no predict"),
        # A regressor has no probabilities, which classification needs.
        ({"estimator": "sklearn.linear_model.Ridge"}, r"model\.estimator: .*no predict_proba"),
        ({"estimator": LOGISTIC, "params": {"Cc": 1.0}}, r"model\.params: .*Cc"),
        ({"estimator": LOGISTIC, "params": {"C": -1.0}}, r"model\.params: .*'C' parameter"),
    ],
)
def test_unusable_estimator_or_params_exit_2_naming_the_key(
    model: dict[str, Any], expected: str, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path, "binary", model)))

    result = cli("train", config)

    assert result.code == 2, result.stderr
    assert re.search(expected, result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "t").exists(), "no run directory for a config error"


def test_loading_refuses_types_outside_the_trusted_packages(tmp_path: Path) -> None:
    """skops names every type a file holds: one from elsewhere (here os.system inside a
    FunctionTransformer, which would run on predict) is refused before anything is built."""
    import skops.io
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    run = mlsmith.train(_config(tmp_path, "binary", {"estimator": LOGISTIC}))
    hostile = make_pipeline(FunctionTransformer(func=__import__("os").system))
    (run.path / MODEL_DIR / MODEL_FILE).write_bytes(skops.io.dumps(hostile))

    with pytest.raises(RunError, match=r"system.*refusing to load it"):
        _ = mlsmith.load_run(run.path).model


def test_no_package_for_the_family_warns_and_export_names_it(
    cli: Callable[..., CliResult], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = _config(tmp_path, "binary", {"params": {"max_iter": 10}}, export={"package": True})
    run = mlsmith.train(raw)

    assert not (run.path / "package").exists()
    assert "no package written: model.type 'sklearn' cannot be packaged" in caplog.text
    exported = cli("export", run.path)
    assert exported.code != 0 and "model.type 'sklearn' cannot be packaged" in exported.stderr
    quantized = cli("export", run.path, "--quantize", "int8")
    assert quantized.code == 2 and "scikit-learn family" in quantized.stderr


def test_tune_searches_estimator_params(tmp_path: Path) -> None:
    raw = _config(tmp_path, "binary", {"estimator": LOGISTIC})
    raw["tune"] = {
        # A loss, not accuracy: equal trial values make Optuna warn about the importances.
        "metric": "val/loss",
        "trials": 2,
        "space": {"model.params.C": {"type": "float", "low": 0.01, "high": 10.0, "log": True}},
    }
    result = mlsmith.tune(raw)

    assert result.counts.get("COMPLETE") == 2
    assert set(result.best_params) == {"model.params.C"}
    best = load_config(result.best_config)
    assert isinstance(best.model.params["C"], float)

    raw["tune"]["space"] = {"model.parms.C": raw["tune"]["space"]["model.params.C"]}
    with pytest.raises(ConfigError, match=r"tune\.space: 'model\.parms\.C' is not a config key"):
        mlsmith.tune(raw)
