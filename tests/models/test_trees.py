"""Boosted trees (LightGBM, XGBoost) end to end: train, evaluate, predict, reload, CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from tests.conftest import CliResult, config_dict, make_table

import mlsmith
from mlsmith.errors import MissingExtraError
from mlsmith.models import trees

FAMILIES = ("lightgbm", "xgboost")
# Small and fast, still enough rounds for early stopping to trigger.
FAST: dict[str, dict[str, Any]] = {
    "lightgbm": {"n_estimators": 300, "min_child_samples": 5, "early_stopping_rounds": 10},
    "xgboost": {"n_estimators": 300, "max_depth": 3, "early_stopping_rounds": 10},
}


def _train(tmp_path: Path, family: str, kind: str, **model: Any) -> mlsmith.Run:
    data = tmp_path / f"{kind}.csv"
    make_table(kind, rows=300, seed=1).to_csv(data, index=False)
    raw = config_dict(data, tmp_path / "runs", model={"type": family, **FAST[family], **model})
    raw["model"] = {"type": family, **FAST[family], **model}
    return mlsmith.train(raw, progress=False)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("family", FAMILIES)
def test_train_evaluate_predict_reload(family: str, kind: str, tmp_path: Path) -> None:
    run = _train(tmp_path, family, kind)
    info = run.info
    assert info["status"] == "finished"
    assert run.path / trees.MODEL_DIR / f"{family}.{'txt' if family == 'lightgbm' else 'json'}"

    # Early stopping: the kept round is earlier than the last one run.
    history = run.history
    assert info["stopped_early"] is True
    assert info["best_epoch"] < history["epoch"].max() <= FAST[family]["n_estimators"]
    assert info["best_epoch"] in set(history["epoch"])
    assert history["epoch"].is_monotonic_increasing
    assert {"epoch", "step", "train/loss", "val/loss"} <= set(history.columns)
    names = run.model.task.metric_names
    assert {f"val/{m}" for m in names} <= set(history.columns)
    assert history["val/loss"].notna().all()
    # The training loss is evaluated only for the rounds that are rows; it falls as trees grow.
    assert history["train/loss"].notna().all()
    assert history["train/loss"].iloc[-1] < history["train/loss"].iloc[0]

    metrics = run.metrics
    test = metrics["test"]
    headline = "accuracy" if kind != "regression" else "r2"
    assert test[headline]["ci95"][0] <= test[headline]["value"] <= test[headline]["ci95"][1]
    assert test[headline]["value"] > (0.7 if kind != "regression" else 0.8)
    assert run.evaluate()["test"][headline]["value"] == pytest.approx(test[headline]["value"])
    assert (run.path / "test_predictions.csv").is_file()

    # Raw rows, with a missing number, a missing category and a category never seen.
    rows = make_table(kind, rows=20, seed=9).drop(columns="label")
    rows.loc[0, "x1"] = np.nan
    rows.loc[1, "color"] = None
    rows.loc[2, "color"] = "ultraviolet"
    predicted = run.predict(rows)
    assert len(predicted) == 20 and predicted["prediction"].notna().all()
    if kind != "regression":
        proba = predicted.filter(like="proba_").to_numpy()
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)

    reloaded = mlsmith.load_run(run.path).predict(rows)
    pd.testing.assert_frame_equal(reloaded, predicted)

    # The per-round rows come from the libraries' own running validation predictions: they
    # must equal scoring the saved model cut at that round.
    from mlsmith.data import tabular

    model = run.model
    assert isinstance(model, trees.TreeModel)
    val = tabular.prepare(run.config, preprocessor=model.preprocessor).val
    val_x = trees.feature_matrix(val.inputs)
    for _, row in history[history["epoch"] <= info["best_epoch"]].iterrows():
        decoded = model.task.decode(model.raw_outputs(model.booster, val_x, int(row["epoch"])))
        expected = model.task.metrics(model.task.truth(val.target), decoded)
        for name, value in expected.items():
            assert row[f"val/{name}"] == pytest.approx(value, rel=1e-4, abs=1e-6), (row, name)


@pytest.mark.parametrize("family", FAMILIES)
def test_categorical_column_is_split_natively(family: str, tmp_path: Path) -> None:
    # The label depends only on which of 30 levels a row has: a numeric reading of the codes
    # (sorted text order) cannot separate them with a few splits, categorical splits can.
    rng = np.random.default_rng(0)
    levels = [f"level{i:02d}" for i in range(30)]
    positive = set(rng.choice(levels, size=15, replace=False))
    code = rng.choice(levels, size=3000)
    frame = pd.DataFrame({"code": code, "noise": rng.normal(size=3000)})
    frame["label"] = np.where(np.isin(code, list(positive)), "yes", "no")
    path = tmp_path / "codes.csv"
    frame.to_csv(path, index=False)
    model = {"type": family, "n_estimators": 3, "early_stopping_rounds": None}
    model.update({"num_leaves": 4} if family == "lightgbm" else {"max_depth": 2})
    # The leakage check would rightly flag 'code' as predicting the target on its own.
    raw = config_dict(path, tmp_path / "runs", train={"preflight": False})
    raw["model"] = model
    run = mlsmith.train(raw, progress=False)
    # Three small trees of numeric splits on 30 shuffled codes stay far from perfect.
    assert run.metrics["test"]["accuracy"]["value"] > 0.99


def test_should_stop_from_a_callback_stops_boosting(tmp_path: Path) -> None:
    from mlsmith.config import load_config
    from mlsmith.data import tabular
    from mlsmith.models.base import FitContext

    class StopAtRound5:
        def on_epoch_end(self, state: Any, row: dict[str, float]) -> None:
            if row["epoch"] >= 5:
                state.should_stop = True

    data_path = tmp_path / "data.csv"
    make_table("binary", rows=200).to_csv(data_path, index=False)
    for family in FAMILIES:
        raw = config_dict(data_path, tmp_path / "runs")
        raw["model"] = {"type": family, "n_estimators": 100, "early_stopping_rounds": None}
        config = load_config(raw)
        data = tabular.prepare(config)
        model = trees.LightGBMModel if family == "lightgbm" else trees.XGBoostModel
        fitted = model(config, data.preprocessor)
        run_dir = tmp_path / family
        summary = fitted.fit(data, FitContext(run_dir=run_dir, callbacks=[StopAtRound5()]))
        assert summary.stopped_early and summary.best_epoch == 5
        assert [row["epoch"] for row in summary.history] == [1, 2, 3, 4, 5]
        assert "callback" in summary.observations[0]


def test_history_is_subsampled_for_long_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlsmith.models import boosting

    monkeypatch.setattr(boosting, "HISTORY_ROWS", 10)  # as 100 rows of 4,500 rounds, faster
    run = _train(tmp_path, "xgboost", "binary", n_estimators=45, early_stopping_rounds=None)
    epochs = run.history["epoch"].tolist()
    # Every 5th round (45 / 10 rounded up), plus the first; the last is the kept one.
    assert epochs == [1, 5, 10, 15, 20, 25, 30, 35, 40, 45]
    assert run.info["best_epoch"] == 45 and run.info["stopped_early"] is False


def test_missing_library_is_a_clear_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    # None in sys.modules makes `import lightgbm` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "lightgbm", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'mlsmith\[trees\]'") as error:
        trees.import_library("lightgbm")
    assert error.value.exit_code == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_train_evaluate_predict_check(
    family: str, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    data = tmp_path / "data.csv"
    make_table("multiclass", rows=240, seed=2).to_csv(data, index=False)
    raw = config_dict(data, tmp_path / "runs")
    raw["model"] = {"type": family, **FAST[family]}
    config = tmp_path / "trees.yaml"
    config.write_text(yaml.safe_dump(raw))

    checked = cli("check", config, "--json")
    assert checked.code == 0, checked.stderr
    results = json.loads(checked.stdout)["results"]
    assert not [r for r in results if r["status"] == "fail"]

    trained = cli("train", config, "--no-progress")
    assert trained.code == 0, trained.stderr
    run_dir = Path(trained.stdout.strip().splitlines()[-1])
    assert (run_dir / "metrics.json").is_file()

    evaluated = cli("evaluate", run_dir, "--json")
    assert evaluated.code == 0, evaluated.stderr
    assert "accuracy" in json.loads(evaluated.stdout)["test"]

    rows = tmp_path / "rows.csv"
    make_table("multiclass", rows=15, seed=4).drop(columns="label").to_csv(rows, index=False)
    output = tmp_path / "predicted.csv"
    predicted = cli("predict", run_dir, "--input", rows, "--output", output)
    assert predicted.code == 0, predicted.stderr
    assert len(pd.read_csv(output)) == 15

    typo = cli("train", config, "model.num_leafs=7" if family == "lightgbm" else "model.max_dept=3")
    assert typo.code == 2
    assert "unknown key" in typo.stderr and "did you mean" in typo.stderr
