"""A forecasting run's saved forecaster and package: predict, MLflow's pyfunc, export, the
registry and a real server forecasting over HTTP (v2 and the plain JSON endpoint)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tests.forecasting.test_forecasting_run import forecast_config, sales
from tests.serving.conftest import start_server

import mlsmith
from mlsmith.errors import DataError
from mlsmith.runtime.forecaster import SavedForecaster
from mlsmith.runtime.package import Package

pytest.importorskip("lightgbm")


@pytest.fixture(scope="module")
def tree_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, mlsmith.Run]:
    root = tmp_path_factory.mktemp("forecast-package")
    config = forecast_config(root)
    config["model"] = {"type": "lightgbm", "n_estimators": 60}
    config["track"] = {"enabled": True}
    return root, mlsmith.train(config)


def untracked(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without MLflow tracking and the report, for a test that reads neither (each
    costs seconds a run; ``tree_run`` is tracked, and the report is tested with the run's)."""
    config["track"] = {"enabled": False}
    config["eval"] = {**config["eval"], "report": False}
    return config


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_forecasting_run_saves_its_forecaster_and_package(
    tree_run: tuple[Path, mlsmith.Run],
) -> None:
    root, run = tree_run
    assert (run.path / "forecaster" / "forecaster.json").is_file()
    assert (run.path / "forecaster" / "model.txt").is_file()
    info = json.loads((run.path / "run.json").read_text())
    assert info["package"]["status"] == "written" and info["package"]["max_abs_diff"] == 0.0
    assert info["package"]["mlflow_model_id"]
    requirements = (run.path / "package" / "requirements.txt").read_text()
    assert "lightgbm==" in requirements and "torch" not in requirements
    assert (run.path / "package" / "code" / "mlsmith_runtime" / "forecaster.py").is_file()
    history = pd.read_csv(root / "sales.csv")
    package = mlsmith.load_package(run.path)
    assert isinstance(package, SavedForecaster)
    forecasts = package.predict(history, 4)
    expected = mlsmith.forecast(run, 4)
    assert list(forecasts.columns) == ["id", "time", "forecast", "lo_80", "hi_80"]
    assert len(forecasts) == 3 * 4
    np.testing.assert_allclose(forecasts["forecast"], expected["forecast"])
    assert (forecasts["lo_80"] < forecasts["forecast"]).all()
    # The forecast follows each series' level: the stores differ by 20 a step.
    last = history.sort_values("month").groupby("store")["sales"].last()
    first = forecasts.groupby("id")["forecast"].first()
    assert (np.abs(first - last[first.index]) < 25).all()


def test_mlflow_pyfunc_forecasts_with_the_horizon_as_a_parameter(
    tree_run: tuple[Path, mlsmith.Run],
) -> None:
    import mlflow.pyfunc

    root, run = tree_run
    history = pd.read_csv(root / "sales.csv")
    model = mlflow.pyfunc.load_model(str(run.path / "package"))
    out = model.predict(history, params={"horizon": 2})
    assert len(out) == 3 * 2
    np.testing.assert_allclose(out["forecast"], mlsmith.forecast(run, 2)["forecast"])
    default = model.predict(history)
    assert len(default) == 3 * 6  # the trained horizon


def test_a_row_package_loader_refuses_a_forecasting_package_by_name(
    tree_run: tuple[Path, mlsmith.Run],
) -> None:
    _, run = tree_run
    with pytest.raises(DataError, match="a forecasting package forecasts series"):
        Package(run.path / "package")


def test_beyond_its_horizon_a_global_model_forecasts_recursively_without_intervals(
    tree_run: tuple[Path, mlsmith.Run],
) -> None:
    root, run = tree_run
    history = pd.read_csv(root / "sales.csv")
    package = mlsmith.load_package(run.path)
    assert isinstance(package, SavedForecaster)
    long = package.predict(history, 15)
    short = package.predict(history, 6)
    assert len(long) == 3 * 15 and "lo_80" not in long.columns
    for store in ("north", "south"):
        np.testing.assert_allclose(
            long[long["id"] == store]["forecast"].to_numpy()[:6],
            short[short["id"] == store]["forecast"].to_numpy(),
        )
    # The recursion keeps following the trend and season: no collapse or blow-up.
    values = long["forecast"].to_numpy()
    assert np.isfinite(values).all() and values.min() > 50 and values.max() < 250


def test_export_writes_the_package_again_and_refuses_network_options(
    tree_run: tuple[Path, mlsmith.Run], cli: Any
) -> None:
    root, run = tree_run
    result = cli("export", run.path, "-o", root / "copy")
    assert result.code == 0, result.stderr
    assert "forecasts with lightgbm" in result.stderr
    export = json.loads((root / "copy" / "data" / "mlsmith" / "export.json").read_text())
    assert export["series_checked"] == 3 and export["package_check"]["max_abs_diff"] == 0.0
    result = cli("export", run.path, "--quantize", "int8")
    assert result.code == 2 and "a forecasting run's package serves its forecaster" in result.stderr


def test_a_registered_forecasting_package_loads_by_alias(
    tree_run: tuple[Path, mlsmith.Run],
) -> None:
    root, run = tree_run
    mlsmith.register(run, "sales-forecast", alias="prod")
    uri = f"sqlite:///{root / 'runs' / 'mlflow.db'}"
    package = mlsmith.load_package("models:/sales-forecast@prod", tracking_uri=uri)
    assert isinstance(package, SavedForecaster) and package.family == "lightgbm"
    history = pd.read_csv(root / "sales.csv")
    assert len(package.predict(history, 3)) == 9


@pytest.mark.parametrize("model", ["mlp", "arima"])
def test_the_mlp_and_statistical_models_are_packaged_too(tmp_path: Path, model: str) -> None:
    if model == "arima":
        pytest.importorskip("statsforecast")
    config = untracked(forecast_config(tmp_path))
    config["model"] = {"type": model}
    config["train"] = {"epochs": 4, "batch_size": 16}
    run = mlsmith.train(config)
    files = {p.name for p in (run.path / "forecaster").iterdir()}
    assert ("model.onnx" in files) == (model == "mlp")
    requirements = (run.path / "package" / "requirements.txt").read_text()
    assert ("onnxruntime==" if model == "mlp" else "statsforecast==") in requirements
    history = pd.read_csv(tmp_path / "sales.csv")
    package = mlsmith.load_package(run.path)
    assert isinstance(package, SavedForecaster)
    got = package.predict(history, 6)
    np.testing.assert_allclose(got["forecast"], mlsmith.forecast(run)["forecast"], rtol=1e-6)
    assert {"lo_80", "hi_80"} <= set(got.columns)


def test_a_server_forecasts_over_v2_and_plain_json_and_refuses_bad_histories(
    tree_run: tuple[Path, mlsmith.Run],
) -> None:
    root, run = tree_run
    history = pd.read_csv(root / "sales.csv")
    two = history[history["store"].isin(["north", "south"])].reset_index(drop=True)
    server = start_server([f"sales={run.path}"])
    try:
        with urllib.request.urlopen(f"{server.url}/v2/models/sales", timeout=30) as response:
            metadata = json.loads(response.read())
        assert [i["name"] for i in metadata["inputs"]] == ["store", "month", "sales"]
        assert metadata["parameters"]["task"] == "forecast"
        assert metadata["parameters"]["horizon"] == 6
        v2 = {
            "inputs": [
                {
                    "name": "store",
                    "datatype": "BYTES",
                    "shape": [len(two)],
                    "data": list(two.store),
                },
                {
                    "name": "month",
                    "datatype": "BYTES",
                    "shape": [len(two)],
                    "data": list(two.month),
                },
                {"name": "sales", "datatype": "FP64", "shape": [len(two)], "data": list(two.sales)},
            ],
            "parameters": {"horizon": 3},
        }
        status, body = _post(f"{server.url}/v2/models/sales/infer", v2)
        assert status == 200, body
        outputs = {o["name"]: o["data"] for o in body["outputs"]}
        assert outputs["id"] == ["north"] * 3 + ["south"] * 3
        assert outputs["time"][0].startswith("2024-01-01")
        expected = SavedForecaster(run.path / "package").predict(two, 3)
        np.testing.assert_allclose(outputs["forecast"], expected["forecast"])
        status, body = _post(
            f"{server.url}/v2/models/sales/predict",
            {"rows": two.to_dict(orient="records"), "horizon": 2},
        )
        assert status == 200, body
        assert [f["id"] for f in body["forecasts"]] == ["north", "north", "south", "south"]
        assert set(body["forecasts"][0]) == {"id", "time", "forecast", "lo_80", "hi_80"}
        # Bad histories and requests: a 400 naming what is wrong, and the server stays up.
        gap = two[two["month"] != "2020-03-01"]
        cases = [
            ({"rows": two.drop(columns="sales").to_dict(orient="records")}, "has no 'sales'"),
            ({"rows": gap.to_dict(orient="records")}, "a gap, or a timestamp off the grid"),
            ({"rows": two.to_dict(orient="records"), "horizon": 0}, "'horizon' must be between"),
            ({"rows": two.to_dict(orient="records"), "horizon": "x"}, "whole number"),
            ({"rows": []}, "non-empty list"),
        ]
        for request, message in cases:
            status, body = _post(f"{server.url}/v2/models/sales/predict", request)
            assert status == 400 and message in body["error"], (request, body)
        unknown = {**v2, "inputs": [*v2["inputs"], {**v2["inputs"][2], "name": "price"}]}
        status, body = _post(f"{server.url}/v2/models/sales/infer", unknown)
        assert status == 400 and "'price' is not a column" in body["error"]
        status, body = _post(
            f"{server.url}/v2/models/sales/feedback", {"request_ids": ["a"], "labels": [1.0]}
        )
        assert status == 400 and "forecasts" in body["error"]
        status, body = _post(f"{server.url}/v2/models/sales/versions/9/infer", v2)
        assert status == 404
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as response:
            metrics = response.read().decode()
        assert 'model="sales"' in metrics
    finally:
        assert server.stop() == 0


def test_a_saved_forecaster_from_another_mlsmith_is_refused_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "forecaster"
    folder.mkdir()
    (folder / "forecaster.json").write_text(
        json.dumps(
            {
                "family": "prophet",
                "horizon": 3,
                "season_length": 1,
                "freq": None,
                "time_column": "t",
                "target": "y",
            }
        )
    )
    with pytest.raises(DataError, match="unknown forecaster 'prophet'"):
        SavedForecaster(folder)
    (folder / "forecaster.json").write_text("{not json")
    with pytest.raises(DataError, match="not readable"):
        SavedForecaster(folder)


def test_history_without_the_known_covariates_ahead_is_a_clear_error(tmp_path: Path) -> None:
    table = sales()
    table["promo"] = (np.arange(len(table)) % 3 == 0).astype(float)
    table.to_csv(tmp_path / "sales.csv", index=False)
    config = untracked(forecast_config(tmp_path, known_covariates=["promo"]))
    config["model"] = {"type": "lightgbm", "n_estimators": 30}
    run = mlsmith.train(config)
    # The package was checked on the history with its last periods as the ones to forecast.
    assert run.info["package"]["status"] == "written"
    package = mlsmith.load_package(run.path)
    assert isinstance(package, SavedForecaster)
    with pytest.raises(DataError, match="add the rows of the periods to forecast"):
        package.predict(table, 3)


def test_the_package_forecasts_in_a_process_where_torch_and_mlsmith_cannot_import(
    tree_run: tuple[Path, mlsmith.Run], tmp_path: Path
) -> None:
    import subprocess
    import sys
    import textwrap

    root, run = tree_run
    script = textwrap.dedent(
        f"""
        import sys

        class Blocked:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "mlsmith"):
                    raise ImportError(f"{{name}} is blocked in this test")
                return None

        sys.meta_path.insert(0, Blocked())
        import mlflow.pyfunc, pandas as pd
        model = mlflow.pyfunc.load_model({str(run.path / "package")!r})
        out = model.predict(pd.read_csv({str(root / "sales.csv")!r}), params={{"horizon": 3}})
        out.to_csv({str(tmp_path / "out.csv")!r}, index=False)
        print(sorted(m for m in sys.modules if m.startswith(("torch", "mlsmith."))))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("[]")
    out = pd.read_csv(tmp_path / "out.csv")
    np.testing.assert_allclose(out["forecast"], mlsmith.forecast(run, 3)["forecast"])


def test_the_mlp_reads_a_whole_horizon_of_known_covariates(tmp_path: Path) -> None:
    """The network reads every step's known covariates at once: a shorter forecast still needs
    the rows of the whole horizon, rather than covariates made up for the periods not given."""
    from tests.forecasting.test_forecasting_run import promotions

    promotions().to_csv(tmp_path / "sales.csv", index=False)
    config = untracked(forecast_config(tmp_path, known_covariates=["promo"]))
    config["model"] = {"type": "mlp", "hidden": [16]}
    config["train"] = {"epochs": 3}
    run = mlsmith.train(config)
    assert run.info["package"]["status"] == "written"
    package = mlsmith.load_package(run.path)
    assert isinstance(package, SavedForecaster)
    three_ahead = promotions(future=3)
    with pytest.raises(DataError, match="known covariates of the 6 periods after its last value"):
        package.predict(three_ahead, 3)
    six_ahead = promotions(future=6)
    assert len(package.predict(six_ahead, 3)) == 3 * 3


def test_the_recursive_strategy_forecasts_step_by_step_end_to_end(tmp_path: Path, cli: Any) -> None:
    config = untracked(forecast_config(tmp_path))
    config["model"] = {"type": "lightgbm", "n_estimators": 60, "strategy": "recursive"}
    run = mlsmith.train(config)
    spec = json.loads((run.path / "forecaster" / "forecaster.json").read_text())
    assert spec["strategy"] == "recursive" and spec["bags"] == 5
    assert run.info["package"]["status"] == "written"
    assert 0.0 < run.metrics["test"]["mase"]["value"] < 2.0  # learns the trend and season
    history = pd.read_csv(tmp_path / "sales.csv")
    package = mlsmith.load_package(run.path)
    assert isinstance(package, SavedForecaster)
    # One step at a time: any horizon, the first steps the same whatever the horizon.
    long, short = package.predict(history, 9), package.predict(history, 2)
    assert len(long) == 27
    np.testing.assert_allclose(
        long.groupby("id")["forecast"].apply(lambda f: f.to_numpy()[:2].tolist()).sum(),
        short.groupby("id")["forecast"].apply(lambda f: f.to_numpy().tolist()).sum(),
    )
    # The strategy is a forecasting setting; past covariates cannot be read recursively.
    bad = forecast_config(tmp_path, past_covariates=["sales_lag"])
    bad["model"] = {"type": "lightgbm", "strategy": "recursive"}
    result = cli("train", _write(tmp_path, bad))
    assert result.code == 2 and "past covariates of the periods ahead" in result.stderr
    from tests.conftest import config_dict, make_table

    make_table("binary", rows=60).to_csv(tmp_path / "t.csv", index=False)
    tabular = config_dict(tmp_path / "t.csv", tmp_path / "runs")
    tabular["model"] = {"type": "lightgbm", "strategy": "recursive"}
    result = cli("train", _write(tmp_path, tabular))
    assert result.code == 2 and "model.strategy: applies to forecasting" in result.stderr


def test_the_combined_strategy_is_the_default_and_the_package_forecasts_as_the_tree(
    tmp_path: Path,
) -> None:
    """On time series the tree's default strategy is combined: the saved forecaster keeps the
    direct boosters and then the recursive ones, and the package forecasts exactly what the
    fitted tree does (the mean of both strategies)."""
    from mlsmith.config import load_config
    from mlsmith.forecasting.global_trees import GlobalTreeForecaster
    from mlsmith.runtime.forecaster import season_offsets

    config = untracked(forecast_config(tmp_path))
    config["model"] = {"type": "lightgbm", "n_estimators": 40}
    assert load_config(config).model.strategy == "combined"  # type: ignore[union-attr]
    run = mlsmith.train(config)
    spec = json.loads((run.path / "forecaster" / "forecaster.json").read_text())
    assert spec["strategy"] == "combined" and spec["bags"] == 5
    assert (run.path / "forecaster" / "model-9.txt").is_file()  # 5 direct, then 5 recursive
    assert run.info["package"]["status"] == "written"
    history = pd.read_csv(tmp_path / "sales.csv")
    package = mlsmith.load_package(run.path)
    assert isinstance(package, SavedForecaster)
    series = package.read(history)
    offsets = season_offsets(series)
    tree = GlobalTreeForecaster(6, series.season_length, n_estimators=40, seed=0)
    tree.fit(series.values, offsets=offsets)
    expected = np.concatenate(
        [tree.predict(y, offset=o) for y, o in zip(series.values, offsets, strict=True)]
    )
    out = package.predict(history, 6)
    got = np.concatenate([out[out["id"] == name]["forecast"].to_numpy() for name in series.ids])
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    # Beyond the trained horizon both halves go on from their own forecasts.
    assert np.isfinite(package.predict(history, 9)["forecast"]).all()


def test_the_auto_strategy_and_the_package_runs_its_choice(
    tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``strategy: auto`` the forecaster saved after the backtest records the strategy
    auto chose on the whole histories, and predict and the package forecast with it."""
    from mlsmith.config import load_config
    from mlsmith.forecasting.global_trees import GlobalTreeForecaster

    config = untracked(forecast_config(tmp_path))
    config["model"] = {"type": "lightgbm", "n_estimators": 40, "strategy": "auto"}
    assert load_config(config).model.strategy == "auto"  # type: ignore[union-attr]
    # Make auto's choice recursive, whatever the validation says: the saved forecaster must
    # then forecast step by step (the first steps the same whatever the horizon).
    monkeypatch.setattr(GlobalTreeForecaster, "_choose", lambda self, *args: "recursive")
    run = mlsmith.train(config)
    assert run.config.model.strategy == "auto"  # type: ignore[union-attr]
    spec = json.loads((run.path / "forecaster" / "forecaster.json").read_text())
    assert spec["strategy"] == "recursive"
    assert run.info["package"]["status"] == "written"
    history = pd.read_csv(tmp_path / "sales.csv")
    package = mlsmith.load_package(run.path)
    assert isinstance(package, SavedForecaster)
    long, short = package.predict(history, 9), package.predict(history, 2)
    np.testing.assert_allclose(
        long.groupby("id")["forecast"].apply(lambda f: f.to_numpy()[:2].tolist()).sum(),
        short.groupby("id")["forecast"].apply(lambda f: f.to_numpy().tolist()).sum(),
    )
    np.testing.assert_allclose(
        mlsmith.forecast(run, 9)["forecast"].to_numpy(), long["forecast"].to_numpy()
    )
    # A table's LightGBM has no strategy to choose: auto there is refused like recursive.
    from tests.conftest import config_dict, make_table

    make_table("binary", rows=60).to_csv(tmp_path / "t.csv", index=False)
    tabular = config_dict(tmp_path / "t.csv", tmp_path / "runs")
    table_tree = load_config(tabular | {"model": {"type": "lightgbm"}}).model
    assert table_tree.strategy == "direct"  # type: ignore[union-attr]
    tabular["model"] = {"type": "lightgbm", "strategy": "auto"}
    result = cli("train", _write(tmp_path, tabular))
    assert result.code == 2 and "model.strategy: applies to forecasting" in result.stderr


def _write(tmp_path: Path, config: dict[str, Any]) -> Path:
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_season_position_is_on_the_calendar_whatever_a_series_start() -> None:
    """Two series starting in different months read the same season position at the same
    calendar month (the global models' season feature), not at the same length of history."""
    from mlsmith.runtime.forecaster import origin_features, period_number, season_offsets
    from mlsmith.runtime.series import read_series

    assert period_number(pd.Timestamp("1971-03-01"), "MS") % 12 == 2  # March
    assert period_number(pd.Timestamp("1959-04-01"), "QS-OCT") % 4 == 1
    assert period_number(pd.Timestamp("1969-12-01"), "MS") % 12 == 11  # before 1970 too
    assert (
        period_number(pd.Timestamp("2024-01-03"), "D") % 7
        == period_number(pd.Timestamp("2024-01-10"), "D") % 7
    )
    assert period_number(7, None) == 7
    frame = pd.concat(
        [
            pd.DataFrame(
                {
                    "id": name,
                    "t": pd.date_range(start, periods=n, freq="MS").strftime("%Y-%m-%d"),
                    "y": np.arange(n, dtype=float),
                }
            )
            for name, start, n in (("a", "2015-01-01", 40), ("b", "2016-07-01", 22))
        ]
    )
    series = read_series(frame, time_column="t", target="y", id_column="id")
    offsets = season_offsets(series)
    assert offsets == [0, 6]
    # Both histories end in 2018-04: the next period is May for both (position 4).
    features = [
        origin_features(y, 1.0, 8, 12, cyclic=False, offset=o)[-1]
        for y, o in zip(series.values, offsets, strict=True)
    ]
    assert features == [4, 4]
