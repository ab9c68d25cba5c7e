"""Training diagnostics end to end: steps.csv, grad norms in MLflow, a diverging run, pre-flight."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from tests.conftest import CliResult, config_dict, make_table

import mlsmith


def test_a_run_records_steps_grad_norms_and_preflight(tmp_path: Path) -> None:
    data = tmp_path / "t.csv"
    make_table("binary").to_csv(data, index=False)
    config = config_dict(
        data, tmp_path / "runs", track={"enabled": True}, eval={"bootstrap": 200, "report": True}
    )
    run = mlsmith.train(config, progress=False)
    steps = pd.read_csv(run.path / "steps.csv")
    # Then one column per layer (the MLP's embeddings, body and head), sampled every 50 steps.
    assert list(steps.columns)[:5] == ["step", "epoch", "lr", "loss", "grad_norm"]
    layers = list(steps.columns)[5:]
    assert layers[0] == "grad_norm/embeddings.0" and layers[-1] == "grad_norm/head"
    assert steps.dropna(subset=layers)["step"].tolist() == [1]
    # 240 rows, 70% train = 168, batch 32: 6 steps per epoch, 3 epochs.
    assert steps["step"].tolist() == list(range(1, 19))
    assert (steps["grad_norm"] > 0).all()
    assert {"grad_norm", "grad_norm_max", "memory_mb"} <= set(run.history.columns)
    preflight = json.loads((run.path / "preflight.json").read_text())
    assert preflight["quick"] is True
    assert {r["status"] for r in preflight["results"]} <= {"pass", "warn", "skip"}
    assert run.info["observations"] == []

    from mlflow import MlflowClient

    client = MlflowClient(run.info["tracking_uri"])
    history = client.get_metric_history(run.info["mlflow_run_id"], "step/grad_norm")
    assert sorted(m.step for m in history) == list(range(1, 19))
    artifacts = {a.path for a in client.list_artifacts(run.info["mlflow_run_id"])}
    assert {"steps.csv", "report.html", "REPORT.md", "MODEL_CARD.md"} <= artifacts


def test_a_diverging_run_exits_1_with_a_diagnosis_and_a_report(
    cli: Callable[..., CliResult], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    data = tmp_path / "t.csv"
    make_table("regression").to_csv(data, index=False)
    config = write_config(data)
    result = cli(
        "train",
        config,
        "train.optimizer.name=sgd",
        "train.optimizer.lr=1e8",
        "train.epochs=5",
        "eval.report=true",
    )
    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "training stopped at step" in result.stderr
    assert (
        "at learning rate 1e+08" in result.stderr
        and "first non-finite gradients in:" in result.stderr
    )
    run_dir = next((tmp_path / "runs" / "t").iterdir())
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and "training stopped at step" in info["error"]
    assert (run_dir / "steps.csv").is_file()
    assert (run_dir / "report.html").is_file()


def test_a_failing_preflight_stops_train_before_any_run_dir(
    cli: Callable[..., CliResult], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    frame = make_table("binary", rows=1000)
    frame["leak"] = (frame["label"] == "yes").astype(float)  # the answer, as a feature
    data = tmp_path / "leaky.csv"
    frame.to_csv(data, index=False)
    config = write_config(data)
    result = cli("train", config)
    assert result.code == 1, result.stderr
    assert "pre-flight checks failed" in result.stderr and "leak" in result.stderr
    assert "train.preflight=false" in result.stderr
    assert not (tmp_path / "runs" / "t").exists()
    # Turned off, the same config trains.
    assert cli("train", config, "train.preflight=false").code == 0


def test_preflight_does_not_change_the_trained_weights(tmp_path: Path) -> None:
    import torch

    data = tmp_path / "t.csv"
    make_table("multiclass").to_csv(data, index=False)
    with_checks = mlsmith.train(config_dict(data, tmp_path / "a"), progress=False)
    without = mlsmith.train(
        config_dict(data, tmp_path / "b", train={"preflight": False}), progress=False
    )
    a = torch.load(with_checks.path / "checkpoints" / "best.pt", weights_only=True)["model"]
    b = torch.load(without.path / "checkpoints" / "best.pt", weights_only=True)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not (without.path / "preflight.json").exists()


@pytest.mark.parametrize("patience", [2])
def test_overfitting_is_an_observation_in_run_json(tmp_path: Path, patience: int) -> None:
    """Pure-noise regression targets: the MLP memorises train while val loss climbs."""
    frame = make_table("regression", rows=120)
    frame["label"] = pd.Series(range(120)).sample(frac=1.0, random_state=0).to_numpy() * 1.0
    data = tmp_path / "noise.csv"
    frame.to_csv(data, index=False)
    config = config_dict(
        data,
        tmp_path / "runs",
        model={"type": "mlp", "hidden": [256, 256], "dropout": 0.0},
        train={
            "epochs": 40,
            "batch_size": 16,
            "overfit_patience": patience,
            "preflight": False,
            "early_stopping": {"enabled": False},
        },
    )
    run = mlsmith.train(config, progress=False)
    assert any("overfitting" in note for note in run.info["observations"]), run.history
