"""track.backends: wandb beside (or instead of) MLflow, in W&B's offline mode: the run's files
under ``<run>/wandb`` read back record by record (what ``wandb sync`` would upload); a resumed
run continues the same W&B run; a failing W&B warns and the run goes on."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import config_dict, make_table

import mlsmith

pytest.importorskip("wandb")

BLOCK = 32 * 1024  # W&B's run file is a LevelDB-style log: 32 KiB blocks of framed records
FRAME = 7  # each record's frame: CRC-32 (4 bytes), length (2), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # Never upload from a test, whatever the machine's environment holds.
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")


def read_records(path: Path) -> list[Any]:
    """Every record of a ``run-*.wandb`` file, parsed with W&B's own protobuf schema."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    records, pending, position = [], b"", 7
    while position + FRAME <= len(data):
        left = BLOCK - position % BLOCK
        if left < FRAME:  # the rest of a block too short for a frame is padding
            position += left
            continue
        length, kind = struct.unpack("<HB", data[position + 4 : position + FRAME])
        if kind == 0 and length == 0:
            position += left
            continue
        body = data[position + FRAME : position + FRAME + length]
        position += FRAME + length
        pending = body if kind in (FULL, FIRST) else pending + body
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _items(items: Any) -> dict[str, Any]:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def _wandb_run(run_dir: Path) -> tuple[list[Path], list[Any]]:
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert files, f"no W&B run file under {run_dir / 'wandb'}"
    return files, [r for f in files for r in read_records(f)]


def _history(records: list[Any]) -> list[dict[str, Any]]:
    return [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]


def test_wandb_offline_tracks_params_metrics_steps_and_figures(tmp_path: Path) -> None:
    make_table("binary", rows=200).to_csv(tmp_path / "data.csv", index=False)
    config = config_dict(
        tmp_path / "data.csv",
        tmp_path / "runs",
        train={"epochs": 3, "layer_grad_norm_every": 2},
        track={"enabled": True, "backends": ["mlflow", "wandb"]},
        eval={"report": True, "bootstrap": 50},
    )
    run = mlsmith.train(config, progress=False)
    assert run.info["status"] == "finished" and run.info["mlflow_run_id"]
    files, records = _wandb_run(run.path)
    assert len(files) == 1
    kinds = {r.WhichOneof("record_type") for r in records}
    assert {"run", "history", "exit"} <= kinds

    [started] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert started.project == "t" and started.display_name == run.path.name
    config_items = _items(started.config.update)
    assert config_items["train.epochs"] == 3

    history = _history(records)
    epochs = [h for h in history if "val/loss" in h]
    assert [h["epoch"] for h in epochs] == [1, 2, 3]
    steps = [h for h in history if "step/lr" in h]
    assert len(steps) >= 6 and all("global_step" in h for h in steps)
    assert [h["global_step"] for h in steps] == sorted(h["global_step"] for h in steps)
    layers = [h for h in history if any(k.startswith("step/grad_norm/") for k in h)]
    assert layers and layers[0]["global_step"] == 1
    finals = [h for h in history if "test/accuracy" in h]
    assert finals and 0.0 <= finals[-1]["test/accuracy"] <= 1.0
    figures = [h for h in history if any(k.startswith("report/") for k in h)]
    assert len(figures) == 1
    # An image is a nested value: report/<name>/_type, .../path, ...
    images = {k.removesuffix("/_type") for k, v in figures[0].items() if k.endswith("/_type")}
    assert all(figures[0][f"{name}/_type"] == "image-file" for name in images)
    assert {"report/learning_curves", "report/gradient_norm_per_layer"} <= images
    media = list(files[0].parent.glob("files/media/images/**/*.png"))
    assert len(media) == len(images)

    [ended] = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert ended.exit_code == 0


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path: Path) -> None:
    make_table("binary", rows=160).to_csv(tmp_path / "data.csv", index=False)
    config = config_dict(
        tmp_path / "data.csv",
        tmp_path / "runs",
        train={"epochs": 1},
        track={"enabled": True, "backends": ["wandb"]},
    )
    first = mlsmith.train(config, progress=False)
    config["train"]["epochs"] = 3
    resumed = mlsmith.train(config, resume=first.path, progress=False)
    assert resumed.path == first.path
    files, records = _wandb_run(first.path)
    ids = {r.run.run_id for r in records if r.WhichOneof("record_type") == "run"}
    assert len(files) == 2 and len(ids) == 1  # two sittings, one W&B run
    epochs = [h["epoch"] for h in _history(records) if "val/loss" in h]
    assert epochs == [1, 2, 3]
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # wandb alone: no MLflow store


def test_wandb_failing_to_start_warns_and_the_run_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import wandb

    def unreachable(*args: Any, **kwargs: Any) -> None:
        raise wandb.errors.CommError("could not reach api.wandb.ai")

    # Fault injection: W&B's own error, as an unreachable server raises it at init.
    monkeypatch.setattr(wandb, "init", unreachable)
    make_table("binary", rows=120).to_csv(tmp_path / "data.csv", index=False)
    config = config_dict(
        tmp_path / "data.csv",
        tmp_path / "runs",
        train={"epochs": 2},
        track={"enabled": True, "backends": ["mlflow", "wandb"]},
    )
    run = mlsmith.train(config, progress=False)
    assert run.info["status"] == "finished" and run.info["mlflow_run_id"]
    warnings = [r.message for r in caplog.records if "wandb tracking is off" in r.message]
    assert len(warnings) == 1 and "could not reach api.wandb.ai" in warnings[0]


def test_wandb_failing_mid_run_warns_once_and_the_run_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from mlsmith.tracking.mirrors import WandbMirror

    def broken(self: Any, metrics: dict[str, float], step: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(WandbMirror, "log_metrics", broken)
    make_table("binary", rows=120).to_csv(tmp_path / "data.csv", index=False)
    config = config_dict(
        tmp_path / "data.csv",
        tmp_path / "runs",
        train={"epochs": 2},
        track={"enabled": True, "backends": ["mlflow", "wandb"]},
    )
    run = mlsmith.train(config, progress=False)
    assert run.info["status"] == "finished"
    warnings = [r.message for r in caplog.records if "wandb tracking failed" in r.message]
    assert len(warnings) == 1 and "disk full" in warnings[0]


def test_without_the_extra_wandb_is_a_clear_message_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_config: Any, cli: Any
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: import fails
    make_table("binary", rows=120).to_csv(tmp_path / "data.csv", index=False)
    path = write_config(tmp_path / "data.csv", track={"enabled": True, "backends": ["wandb"]})
    result = cli("train", path)
    assert result.code == 2
    assert "pip install 'mlsmith[wandb]'" in result.stderr and "Traceback" not in result.stderr
