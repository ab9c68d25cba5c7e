"""track.backends: tensorboard beside (or instead of) MLflow: event files under the run directory,
read back with TensorBoard's own reader; a failing writer warns and the run goes on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.conftest import config_dict, make_table

import mlsmith

pytest.importorskip("tensorboard")


def _events(run_dir: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_and_mlflow_track_the_same_run(tmp_path: Path) -> None:
    make_table("binary", rows=200).to_csv(tmp_path / "data.csv", index=False)
    config = config_dict(
        tmp_path / "data.csv",
        tmp_path / "runs",
        train={"epochs": 3, "layer_grad_norm_every": 2},
        track={"enabled": True, "backends": ["mlflow", "tensorboard"]},
        eval={"report": True, "bootstrap": 50},
    )
    run = mlsmith.train(config, progress=False)
    assert run.info["mlflow_run_id"]
    events = _events(run.path)
    scalars = set(events.Tags()["scalars"])
    assert {"val/loss", "train/loss", "step/lr", "step/loss", "test/accuracy"} <= scalars
    assert {"step/grad_norm/body.0", "step/grad_norm/head"} <= scalars
    assert events.Scalars("step/grad_norm/head")[0].step == 1
    # The report's figures, as images, in the order the report shows them.
    images = events.Tags()["images"]
    assert images[0] == "report/learning_curves" and "report/gradient_norm_per_layer" in images
    picture = events.Images("report/learning_curves")[0]
    assert picture.width > 100 and picture.height > 100
    assert picture.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
    assert [e.step for e in events.Scalars("val/loss")] == [1, 2, 3]
    steps = events.Scalars("step/lr")
    assert len(steps) >= 3 and steps[-1].step > steps[0].step
    assert "config/text_summary" in events.Tags()["tensors"]
    # The params and the final test metrics in the HParams tab.
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert session.hparams["train.epochs"].number_value == 3


def test_tensorboard_alone_leaves_mlflow_off(tmp_path: Path) -> None:
    make_table("binary", rows=120).to_csv(tmp_path / "data.csv", index=False)
    config = config_dict(
        tmp_path / "data.csv",
        tmp_path / "runs",
        train={"epochs": 2},
        track={"enabled": True, "backends": ["tensorboard"]},
    )
    run = mlsmith.train(config, progress=False)
    assert run.info.get("mlflow_run_id") is None
    assert not (tmp_path / "runs" / "mlflow.db").exists()
    assert [e.step for e in _events(run.path).Scalars("val/loss")] == [1, 2]


def test_a_failing_tensorboard_writer_warns_and_the_run_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from torch.utils.tensorboard import SummaryWriter

    def broken(self: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    # Fault injection: the real writer, failing the way a full disk would.
    monkeypatch.setattr(SummaryWriter, "add_scalar", broken)
    make_table("binary", rows=120).to_csv(tmp_path / "data.csv", index=False)
    config = config_dict(
        tmp_path / "data.csv",
        tmp_path / "runs",
        train={"epochs": 2},
        track={"enabled": True, "backends": ["mlflow", "tensorboard"]},
    )
    run = mlsmith.train(config, progress=False)
    assert run.info["status"] == "finished" and run.info["mlflow_run_id"]
    warnings = [r.message for r in caplog.records if "tensorboard tracking failed" in r.message]
    assert len(warnings) == 1 and "disk full" in warnings[0]


def test_an_unknown_backend_is_a_config_error(tmp_path: Path) -> None:
    config = config_dict(tmp_path / "data.csv", tmp_path / "runs", track={"backends": ["neptune"]})
    with pytest.raises(mlsmith.ConfigError, match=r"track\.backends"):
        mlsmith.load_config(config)
