"""Checkpoints: every field survives a round trip, loads safely, and is written atomically."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mlsmith.config import TrainConfig
from mlsmith.data.batches import BatchOptions, TensorBatches
from mlsmith.errors import RunError
from mlsmith.tasks import RegressionTask
from mlsmith.training.checkpoint import (
    BEST,
    FORMAT_VERSION,
    LAST,
    load_checkpoint,
    save_checkpoint,
)
from mlsmith.training.precision import FP16Mixed
from mlsmith.training.reproducibility import restore_rng_states, rng_states
from mlsmith.training.trainer import Trainer


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return x, x.sum(axis=1).astype(np.float32)


# --- round trip -------------------------------------------------------------------------------


def test_trainer_checkpoint_holds_every_field(tmp_path: Path) -> None:
    """last.pt after a real fit: model, optimizer, schedule, precision, early stopping, RNG
    states, loop state, config and code version, all readable with weights_only=True."""
    config = TrainConfig(
        epochs=2,
        batch_size=16,
        device="cpu",
        scheduler={"name": "cosine", "warmup_epochs": 0.5},
        early_stopping={"patience": 5},
    )
    metadata = {"config": {"train": {"epochs": 2}, "seed": 3}, "code_version": "abc123+dirty"}
    captured: dict[str, Any] = {}
    torch.manual_seed(0)
    model = Net()

    class Capture:
        def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
            # Called right after last.pt was written; nothing has drawn random numbers since.
            captured["model"] = {k: v.clone() for k, v in model.state_dict().items()}
            captured["torch_rng"] = torch.get_rng_state()
            captured["python_rng"] = random.getstate()
            captured["numpy_rng"] = np.random.get_state()
            captured["history"] = list(trainer.history)

    x, y = data(64)
    trainer = Trainer(config, checkpoint_dir=tmp_path, callbacks=[Capture()], metadata=metadata)
    train = TensorBatches({"x": x}, y, BatchOptions(16, shuffle=True, seed=5))
    trainer.fit(
        model, train, TensorBatches({"x": x}, y, BatchOptions(32)), RegressionTask(0.0, 1.0)
    )
    # After fit the optimizer is per parameter again (during it, on the CPU, it steps flat
    # buffers: see training/flat.py) and holds the last epoch's state.
    assert trainer.optimizer is not None
    captured["optimizer"] = trainer.optimizer.state_dict()

    state = torch.load(tmp_path / LAST, map_location="cpu", weights_only=True)
    assert load_checkpoint(tmp_path / LAST).keys() == state.keys()
    assert state["format"] == FORMAT_VERSION
    for key, value in captured["model"].items():
        assert torch.equal(state["model"][key], value)
    saved_opt = state["optimizer"]
    assert saved_opt["param_groups"] == captured["optimizer"]["param_groups"]
    for index, slots in captured["optimizer"]["state"].items():
        assert saved_opt["state"][index]["step"] == slots["step"] == 8
        assert torch.equal(saved_opt["state"][index]["exp_avg"], slots["exp_avg"])
        assert torch.equal(saved_opt["state"][index]["exp_avg_sq"], slots["exp_avg_sq"])
    assert state["schedule"]["step_count"] == 8
    assert state["schedule"]["per_step"]["last_epoch"] == 8
    assert state["precision"] == {}
    assert state["early_stopping"]["bad_epochs"] in (0, 1)
    assert state["early_stopping"]["best"] == min(r["val/loss"] for r in captured["history"])
    assert torch.equal(state["rng"]["torch"], captured["torch_rng"])
    assert state["rng"]["python"] == captured["python_rng"]
    kind, keys, pos, has_gauss, cached = captured["numpy_rng"]
    assert state["rng"]["numpy"]["kind"] == kind and state["rng"]["numpy"]["pos"] == pos
    assert state["rng"]["numpy"]["has_gauss"] == has_gauss
    assert state["rng"]["numpy"]["cached_gaussian"] == cached
    assert np.array_equal(state["rng"]["numpy"]["keys"].numpy(), keys.astype(np.int64))
    loop = state["loop"]
    assert (loop["epoch"], loop["step_in_epoch"], loop["global_step"]) == (2, 0, 8)
    assert loop["history"] == captured["history"] and len(loop["history"]) == 2
    assert loop["best_epoch"] == trainer.best_epoch
    assert loop["best_score"] == trainer.best_score
    assert loop["should_stop"] is False
    assert (loop["loss_sum"], loop["samples"]) == (0.0, 0)
    assert torch.equal(loop["epoch_start_rng"], train.generator.get_state())
    assert state["config"] == metadata["config"]
    assert state["code_version"] == "abc123+dirty"
    assert (state["epoch"], state["global_step"]) == (2, 8)
    assert state["metrics"] == captured["history"][-1]

    best = load_checkpoint(tmp_path / BEST)
    assert best["epoch"] == trainer.best_epoch
    assert best["config"] == metadata["config"] and best["code_version"] == "abc123+dirty"
    assert "optimizer" not in best  # best.pt is the model only


def test_scaler_state_round_trips() -> None:
    precision = FP16Mixed(torch.device("cpu"))
    param = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([param], lr=0.1)
    precision.backward((param * 2).sum())
    precision.step(optimizer)
    precision.scaler.update(new_scale=512.0)
    restored = FP16Mixed(torch.device("cpu"))
    restored.load_state_dict(precision.state_dict())
    assert restored.state_dict() == precision.state_dict()
    assert restored.scaler.get_scale() == 512.0 != FP16Mixed(torch.device("cpu")).scaler.get_scale()


def test_rng_states_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leave a cached Gaussian in NumPy's legacy state
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_states()})
    expected = (random.random(), np.random.standard_normal(3), torch.rand(3))

    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_states(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (random.random(), np.random.standard_normal(3), torch.rand(3))
    assert got[0] == expected[0]
    assert np.array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2])


# --- safe loading -----------------------------------------------------------------------------


def test_missing_or_foreign_files_are_run_errors(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(RunError, match="not an mlsmith checkpoint of format"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(RunError, match="not a readable mlsmith checkpoint"):
        load_checkpoint(tmp_path / "torn.pt")


class Payload:
    """Pickled by reference: a weights_only load must refuse to construct it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this would run on load",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT_VERSION, "model": Payload()}, path)
    with pytest.raises(RunError, match="not a readable mlsmith checkpoint"):
        load_checkpoint(path)


# --- atomic writes ----------------------------------------------------------------------------


class Unpicklable:
    def __reduce__(self) -> tuple[Any, ...]:
        raise pickle.PicklingError("cannot serialise this")


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != LAST)


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    """Serialisation fails halfway through the file (after a large tensor has been written):
    last.pt still holds the previous checkpoint, whole, and no temporary file is left."""
    path = tmp_path / LAST
    good = {"model": {"w": torch.arange(10.0)}, "epoch": 1}
    save_checkpoint(path, good)
    before = path.read_bytes()
    bad = {"model": {"w": torch.zeros(1_000_000)}, "epoch": 2, "extra": Unpicklable()}
    with pytest.raises(pickle.PicklingError):
        save_checkpoint(path, bad)
    assert path.read_bytes() == before
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.arange(10.0))
    assert leftovers(tmp_path) == []


def test_a_crash_after_a_partial_write_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save dies after writing half a file (a crash stand-in)."""
    path = tmp_path / LAST
    save_checkpoint(path, {"epoch": 1})
    real_save = torch.save

    def crash(obj: Any, target: Any) -> None:
        real_save(obj, target)
        Path(target).write_bytes(Path(target).read_bytes()[:100])
        raise OSError("disk went away")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk went away"):
        save_checkpoint(path, {"epoch": 2, "w": torch.ones(1000)})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert leftovers(tmp_path) == []


WRITER = textwrap.dedent(
    """
    import sys, torch
    from mlsmith.training.checkpoint import save_checkpoint
    path, i = sys.argv[1], 0
    while True:
        i += 1
        save_checkpoint(path, {"i": i, "w": torch.full((300_000,), float(i))})
        print(i, flush=True)
    """
)


def test_kill_9_while_saving_never_leaves_a_torn_checkpoint(tmp_path: Path) -> None:
    """A process rewriting last.pt in a loop is killed with SIGKILL at a random point."""
    path = tmp_path / LAST
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as writer:
        try:
            assert writer.stdout is not None
            for _ in range(3):  # a few complete saves, then kill during one of the next
                assert writer.stdout.readline(), "the writer died"
            time.sleep(0.05)
        finally:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait()
    assert writer.returncode == -signal.SIGKILL
    state = load_checkpoint(path)
    assert state["i"] >= 3
    assert torch.equal(state["w"], torch.full((300_000,), float(state["i"])))
    # A kill -9 cannot clean up: at most the one temporary file it was writing, never last.pt.
    assert all(
        name.startswith(f".{LAST}.") and name.endswith(".tmp") for name in leftovers(tmp_path)
    )
    assert len(leftovers(tmp_path)) <= 1
