"""``mlsmith monitor``: a real package, a real prediction log, drift and live performance.

One tiny tabular run (numeric and categorical features) is trained once for the module with its
package on; its reference statistics come from the training split. Logs are written by the
server's own :class:`PredictionLog` from the package's own answers.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import CliResult, config_dict, make_table

import mlsmith
from mlsmith.config.serve import PredictionLogConfig
from mlsmith.monitoring import monitor, monitor_config
from mlsmith.runtime.package import Package
from mlsmith.serving.predlog import PredictionLog

LIVE_ROWS = 600


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("monitor")
    make_table("binary", rows=1600, seed=0).to_csv(root / "data.csv", index=False)
    raw = config_dict(
        root / "data.csv",
        root / "runs",
        model={"type": "mlp", "hidden": [8], "dropout": 0.0},
        train={"epochs": 2, "batch_size": 64},
        eval={"bootstrap": 100, "report": False},
        export={"package": True},
    )
    run = mlsmith.train(raw, progress=False, epoch_lines=False)
    assert run.info["package"]["status"] == "written", run.info["package"]
    return run.path / "package"


@pytest.fixture(scope="module")
def package(package_dir: Path) -> Package:
    return Package(package_dir)


def _live() -> pd.DataFrame:
    """Rows from the training distribution that the model never saw (another seed)."""
    return make_table("binary", rows=LIVE_ROWS, seed=7)


def _write_log(directory: Path, package: Package, live: pd.DataFrame) -> list[str]:
    """Log every row as its own request (variants a and b in turn), as the server would."""
    features = live.drop(columns="label")
    outputs = package.predict(features)
    log = PredictionLog(PredictionLogConfig(directory=directory))
    ids = [f"req-{i}" for i in range(len(live))]
    for i, request_id in enumerate(ids):
        log.append(
            request_id,
            "clf",
            "ab"[i % 2],
            features.iloc[i : i + 1].reset_index(drop=True),
            outputs.iloc[i : i + 1].reset_index(drop=True),
            1.0,
        )
    log.close()
    return ids


def _shifted(live: pd.DataFrame, package: Package) -> pd.DataFrame:
    """x1 moved by one training standard deviation; 'red' twice as frequent as in training."""
    encoder = package.encoder.inner
    std = float(encoder.stds[encoder.numeric.index("x1")])  # type: ignore[union-attr]
    shifted = live.copy()
    shifted["x1"] = shifted["x1"] + std
    training = make_table("binary", rows=1600, seed=0)
    share = float((training["color"] == "red").mean())
    rng = np.random.default_rng(3)
    reds = rng.random(len(shifted)) < 2 * share
    others = rng.choice(["green", "blue"], size=len(shifted))
    shifted["color"] = np.where(reds, "red", others)
    return shifted


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory, package: Package) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("logs")
    live = _live()
    _write_log(root / "stable", package, live)
    ids = _write_log(root / "shifted", package, _shifted(live, package))
    labels = pd.DataFrame({"request_id": ids, "label": live["label"]})
    labels.to_csv(root / "labels.csv", index=False)
    wrong = labels.assign(label=np.where(labels["label"] == "yes", "no", "yes"))
    wrong.to_parquet(root / "wrong.parquet")
    return {
        "stable": root / "stable",
        "shifted": root / "shifted",
        "labels": root / "labels.csv",
        "wrong": root / "wrong.parquet",
    }


@pytest.mark.slow
def test_unshifted_rows_pass_and_shifted_rows_fail_naming_exactly_the_shifted_features(
    cli: Callable[..., CliResult], package_dir: Path, logs: dict[str, Path], tmp_path: Path
) -> None:
    stable = cli("monitor", package_dir.parent, "--log", logs["stable"], "--json")
    assert stable.code == 0, stable.stdout + stable.stderr
    result = json.loads(stable.stdout)
    assert result["drifted_features"] == [] and not result["prediction_drifted"]
    assert result["rows"] == LIVE_ROWS
    assert max(f["psi"] for f in result["features"]) < 0.1

    report = tmp_path / "report.html"
    shifted = cli("monitor", package_dir, "--log", logs["shifted"], "--output", report)
    assert shifted.code == 1, shifted.stdout + shifted.stderr
    assert "feature 'x1' drifted" in shifted.stdout
    assert "feature 'color' drifted" in shifted.stdout
    for other in ("x2", "size"):
        assert f"feature '{other}'" not in shifted.stdout
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page
    assert "x1" in page and "color" in page

    as_json = json.loads(cli("monitor", package_dir, "--log", logs["shifted"], "--json").stdout)
    assert sorted(as_json["drifted_features"]) == ["color", "x1"]
    by_name = {f["name"]: f for f in as_json["features"]}
    assert by_name["x1"]["psi"] > 0.2 and by_name["x1"]["p_value"] < 0.01
    assert by_name["x2"]["psi"] < 0.1 and by_name["size"]["psi"] < 0.1


@pytest.mark.slow
def test_live_performance_is_scored_on_labels_and_compared_with_the_test_split(
    package: Package, logs: dict[str, Path]
) -> None:
    good = monitor(package, logs["stable"], labels=logs["labels"])
    assert good.exit_code == 0
    perf = good.performance
    assert perf is not None and perf.rows == LIVE_ROWS and perf.unmatched == 0
    assert perf.held_out_split == "test" and "accuracy" in perf.held_out
    low, high = perf.metrics["accuracy"]["ci95"]
    assert low <= perf.metrics["accuracy"]["value"] <= high
    assert perf.judged and not perf.degraded

    # Every label flipped: accuracy collapses, whatever the inputs did.
    bad = monitor(package, logs["stable"], labels=logs["wrong"])
    assert bad.performance is not None and bad.performance.degraded
    assert bad.exit_code == 1 and bad.drifted_features == []
    assert bad.reasons == ["live accuracy degraded"]

    # One variant, the most recent rows: fewer rows judged, labels of the others unmatched.
    recent = monitor(package, logs["stable"], labels=logs["labels"], variant="a", last=150)
    assert recent.rows == 150 and recent.performance is not None
    assert recent.performance.rows == 150 and recent.performance.unmatched == LIVE_ROWS - 150

    # Stricter thresholds for drift change the verdict, not the figures.
    strict = monitor(package, logs["stable"], config=monitor_config(psi_threshold=1e-6))
    assert [f.psi for f in strict.features] == [f.psi for f in good.features]


@pytest.mark.slow
def test_bad_inputs_exit_2_with_a_message_naming_the_file(
    cli: Callable[..., CliResult],
    package_dir: Path,
    package: Package,
    logs: dict[str, Path],
    tmp_path: Path,
) -> None:
    def fails(*args: str | Path) -> str:
        result = cli("monitor", package_dir, *args)
        assert result.code == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        return result.stderr

    assert "not found" in fails("--log", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert "no prediction log files" in fails("--log", tmp_path / "empty")

    other = make_table("binary", rows=20, seed=1).rename(columns={"x1": "age"})
    log = PredictionLog(PredictionLogConfig(directory=tmp_path / "other"))
    log.append("r", "churn", "a", other.drop(columns="label"), pd.DataFrame({"p": [0] * 20}), 1.0)
    log.close()
    message = fails("--log", tmp_path / "other")
    assert "'x1'" in message and "another model" in message

    (tmp_path / "labels.parquet").write_bytes(b"not parquet at all")
    message = fails("--log", logs["stable"], "--labels", tmp_path / "labels.parquet")
    assert "labels.parquet" in message and "not readable" in message
    pd.DataFrame({"id": ["x"], "label": ["yes"]}).to_csv(tmp_path / "ids.csv", index=False)
    assert "request_id" in fails("--log", logs["stable"], "--labels", tmp_path / "ids.csv")
    assert "psi_threshold" in fails("--log", logs["stable"], "--psi-threshold", "-1")
    assert "model 'nope'" in fails("--log", logs["stable"], "--model", "nope")

    # A package written before packages carried reference statistics still loads.
    old = tmp_path / "old-package"
    shutil.copytree(package_dir, old)
    (old / "data" / "mlsmith" / "reference.json").unlink()
    assert Package(old).reference is None
    result = cli("monitor", old, "--log", logs["stable"])
    assert result.code == 2 and "reference.json" in result.stderr


def test_regression_labels_are_scored_with_rmse_against_the_held_out_value(
    tmp_path: Path,
) -> None:
    from mlsmith.config.monitor import MonitorConfig
    from mlsmith.monitoring.logs import read_labels
    from mlsmith.monitoring.performance import live_performance
    from mlsmith.runtime.outputs import Decoder

    rng = np.random.default_rng(0)
    truth = rng.normal(10.0, 3.0, size=300)
    log = pd.DataFrame(
        {
            "request_id": [f"r{i // 3}" for i in range(300)],
            "row": [i % 3 for i in range(300)],
            "variant": ["a", "b"] * 150,
            "output.prediction": truth + rng.normal(0.0, 1.0, size=300),
        }
    )
    pd.DataFrame({"request_id": log["request_id"], "label": truth}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    labels = read_labels(tmp_path / "labels.csv")
    decoder = Decoder({"kind": "regression", "mean": 10.0, "std": 3.0})
    config = MonitorConfig(bootstrap=200)
    as_tested = {"split": "test", "metrics": {"rmse": {"value": 1.0}}}
    perf = live_performance(log, labels, decoder, as_tested, config, tmp_path / "labels.csv")
    assert perf.headline == "rmse" and perf.judged and not perf.degraded
    assert perf.metrics["rmse"]["value"] == pytest.approx(1.0, abs=0.15)
    assert set(perf.by_variant) == {"a", "b"}
    better_before = {"split": "test", "metrics": {"rmse": {"value": 0.5}}}
    worse = live_performance(log, labels, decoder, better_before, config, "labels.csv")
    assert worse.degraded
