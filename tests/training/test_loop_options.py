"""Loop options: train.ema, train.max_time and train.profile (the exact resume with EMA is in
test_trainer's resume test)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.conftest import CliResult
from tests.training.test_trainer import (
    N_FEATURES,
    Crash,
    CrashAt,
    assert_states_equal,
    batches,
    make_net,
    regression_data,
    states_close,
    train_config,
)
from torch import nn

from mlsmith.config import Config, load_config
from mlsmith.config.train import format_duration, parse_duration
from mlsmith.errors import ConfigError
from mlsmith.reports.facts import observations, progress_facts
from mlsmith.reports.runinfo import load_record
from mlsmith.tasks import RegressionTask
from mlsmith.training.checkpoint import BEST, LAST, load_checkpoint
from mlsmith.training.ema import WeightAverage
from mlsmith.training.trainer import Trainer, predict_raw

# --- train.ema --------------------------------------------------------------------------------


def test_ema_weights_are_validated_and_saved_as_best(tmp_path: Path) -> None:
    """best.pt and the model fit() hands back are the average, which validation scored; last.pt
    keeps the trained weights (to continue from) beside the average."""
    x, y = regression_data(200)
    val = batches(*regression_data(64, seed=1), 32)
    model = make_net()
    trainer = Trainer(train_config(epochs=1, ema=0.9), checkpoint_dir=tmp_path)
    result = trainer.fit(model, batches(x, y, 16), val, RegressionTask(0.0, 1.0))

    best, last = load_checkpoint(tmp_path / BEST), load_checkpoint(tmp_path / LAST)
    assert last["ema"]["updates"] == 13  # one per optimizer step
    assert_states_equal(best["model"], last["ema"]["model"])
    assert not states_close(best["model"], last["model"])  # the average is not the raw weights
    assert_states_equal(model.state_dict(), best["model"])
    _, loss = predict_raw(model, val, objective=RegressionTask(0.0, 1.0))
    assert result.history[0]["val/loss"] == pytest.approx(loss, rel=1e-6)


class NormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(N_FEATURES, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_ema_averages_parameters_and_copies_batch_norm_statistics() -> None:
    torch.manual_seed(0)
    net = NormNet().train()
    average = WeightAverage(net, decay=0.5)
    start = [p.detach().clone() for p in net.parameters()]
    net(torch.randn(16, N_FEATURES))  # moves the running statistics
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    average.update()  # warm-up decay min(0.5, 2/11) = 2/11: 9/11 of the way to the new weights
    for mine, old, new in zip(average.model.parameters(), start, net.parameters(), strict=True):
        torch.testing.assert_close(mine, old + 9 / 11)
        assert not torch.equal(mine, new)
    for mine, theirs in zip(average.model.buffers(), net.buffers(), strict=True):
        assert torch.equal(mine, theirs)
    assert not any(p.requires_grad for p in average.model.parameters())


@pytest.mark.parametrize("value", [-0.1, 0.0, 1.0, 1.5])
def test_ema_decay_outside_zero_one_is_refused(value: float) -> None:
    with pytest.raises(ConfigError, match=r"train\.ema"):
        _load({"ema": value})


def _load(train: dict[str, Any]) -> Config:
    return load_config({"data": {"path": "x.csv", "target": "y"}, "train": train})


# --- train.max_time ---------------------------------------------------------------------------


class Slow:
    """Makes every optimizer step take at least ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_step_end(self, trainer: Trainer) -> None:
        time.sleep(self.seconds)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("20m", 1200), ("1h30m", 5400), ("1.5h", 5400), (2, 2)]
)
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("value", ["20x", "m", "1m1h", -5, 0])
def test_bad_time_budget_is_refused(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"train\.max_time"):
        _load({"max_time": value})


def test_max_time_stops_mid_epoch_validates_and_keeps_the_best(tmp_path: Path) -> None:
    """Epochs of 50 steps of 20 ms (1 s each) and 100 epochs: a 0.5 s budget ends the run
    inside its first epoch, which is validated so best.pt holds the last weights."""
    x, y = regression_data(400)
    config = train_config(epochs=100, batch_size=8, max_time="0.5s")
    model = make_net()
    started = time.monotonic()
    trainer = Trainer(config, checkpoint_dir=tmp_path, callbacks=[Slow(0.02)])
    result = trainer.fit(model, batches(x, y, 8), batches(x, y, 64), RegressionTask(0.0, 1.0))
    elapsed = time.monotonic() - started

    assert elapsed < 1.0 + 0.5  # well under one more epoch
    assert len(result.history) == 1 and result.stopped_early
    last, best = load_checkpoint(tmp_path / LAST), load_checkpoint(tmp_path / BEST)
    assert 0 < last["loop"]["global_step"] < 50  # mid-epoch
    assert last["loop"]["should_stop"] is True
    assert 0.5 < last["loop"]["train_seconds"] < elapsed
    assert_states_equal(best["model"], last["model"])
    (note,) = result.observations
    assert note.startswith("stopped after") and "train.max_time=0.5s" in note


def test_max_time_counts_the_time_before_a_resume(tmp_path: Path) -> None:
    x, y = regression_data(400)
    data = batches(x, y, 8), batches(x, y, 64)
    first = train_config(epochs=3, batch_size=8, checkpoint={"every_n_steps": 10})
    with pytest.raises(Crash):
        Trainer(first, checkpoint_dir=tmp_path, callbacks=[Slow(0.02), CrashAt(25)]).fit(
            make_net(), *data, RegressionTask(0.0, 1.0)
        )
    spent = load_checkpoint(tmp_path / LAST)["loop"]["train_seconds"]
    assert spent > 0.4  # 20 steps of 20 ms

    # A budget smaller than the time already spent: one step after resuming, it stops.
    budget = train_config(epochs=3, batch_size=8, max_time=spent / 2)
    result = Trainer(budget, checkpoint_dir=tmp_path).fit(
        make_net(), *data, RegressionTask(0.0, 1.0), resume=tmp_path / LAST
    )
    assert load_checkpoint(tmp_path / LAST)["loop"]["global_step"] == 21
    assert result.stopped_early and "train.max_time" in result.observations[-1]


# --- train.profile ----------------------------------------------------------------------------


def test_profile_writes_a_chrome_trace_and_a_summary(tmp_path: Path) -> None:
    x, y = regression_data(200)
    config = train_config(epochs=2, batch_size=16, profile={"steps": 3, "warmup": 1})
    Trainer(config, checkpoint_dir=tmp_path / "checkpoints", profile_dir=tmp_path / "p").fit(
        make_net(), batches(x, y, 16), batches(x, y, 64), RegressionTask(0.0, 1.0)
    )
    trace = json.loads((tmp_path / "p" / "trace.json").read_text())
    assert any(event.get("name") == "aten::addmm" for event in trace["traceEvents"])
    summary = json.loads((tmp_path / "p" / "profile.json").read_text())
    assert summary["steps"] == 3 and summary["warmup_steps"] == 1
    assert 0 < summary["data_wait_share"] < 1
    assert summary["data_wait_share"] + summary["compute_share"] == pytest.approx(1.0)
    assert summary["step_ms"] > summary["data_wait_ms"] > 0
    assert summary["peak_memory_mb"] > 0
    names = [op["name"] for op in summary["top_cpu_operators"]]
    assert "aten::addmm" in names and not any(n.startswith("ProfilerStep") for n in names)
    assert {"calls", "self_cpu_ms", "cpu_ms"} <= summary["top_cpu_operators"][0].keys()


def test_a_run_shorter_than_the_profile_still_writes_it(tmp_path: Path) -> None:
    x, y = regression_data(64)
    config = train_config(epochs=1, batch_size=16, profile={"steps": 100})
    Trainer(config, checkpoint_dir=tmp_path, profile_dir=tmp_path / "p").fit(
        make_net(), batches(x, y, 16), batches(x, y, 64), RegressionTask(0.0, 1.0)
    )
    summary = json.loads((tmp_path / "p" / "profile.json").read_text())
    assert summary["steps"] == 2  # 4 steps, 2 of them warm-up
    json.loads((tmp_path / "p" / "trace.json").read_text())


@pytest.mark.parametrize(("profile", "key"), [({"steps": 0}, "steps"), ({"warmup": 0}, "warmup")])
def test_bad_profile_settings_are_refused(profile: dict[str, int], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"train\.profile\.{key}"):
        _load({"profile": profile})


# --- end to end -------------------------------------------------------------------------------


def test_train_with_ema_time_budget_and_profile(
    table_csv: Callable[..., Path],
    write_config: Callable[..., Path],
    cli: Callable[..., CliResult],
) -> None:
    """`mlsmith train` with all three: the budget stops a 500-epoch run, run.json says so, the
    profile lands in the run directory and the report's facts show it."""
    config = write_config(
        table_csv("binary"),
        train={"epochs": 500, "batch_size": 8, "early_stopping": {"enabled": False}},
        eval={"bootstrap": 0, "report": False},
    )
    started = time.monotonic()
    overrides = ["train.ema=0.9", "train.max_time=1s", "train.profile.steps=2"]
    result = cli("train", config, *overrides, "--no-progress")
    assert result.code == 0, result.stderr
    assert time.monotonic() - started < 30
    run_dir = Path(result.stdout.strip().splitlines()[-1])

    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["stopped_early"] is True
    assert 1 <= info["epochs_run"] < 500
    assert any("train.max_time=1s" in note for note in info["observations"])
    last = load_checkpoint(run_dir / "checkpoints" / LAST)
    assert last["ema"]["updates"] == last["loop"]["global_step"]
    json.loads((run_dir / "profile" / "trace.json").read_text())
    assert json.loads((run_dir / "profile" / "profile.json").read_text())["steps"] == 2
    record = load_record(run_dir)
    rows = dict(progress_facts(record))
    assert "over 2 steps" in rows["profiled step"] and "aten::" in rows["top operators (self CPU)"]
    # The report gives the time budget as the reason, not early stopping's patience.
    assert rows["stopped early"].endswith("the time budget train.max_time was spent")
    notes = observations(record)
    assert notes[0].startswith("Stopped after") and "patience" not in " ".join(notes)
    assert not any("no improvement" in note for note in notes)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.ema=-0.5", "train.ema"),
        ("train.max_time=20x", "train.max_time"),
        ("train.profile.steps=0", "train.profile.steps"),
        ("train.gradient_checkpointing=true", "train.gradient_checkpointing"),  # on an mlp
    ],
)
def test_bad_loop_options_exit_2_naming_the_key(
    table_csv: Callable[..., Path],
    write_config: Callable[..., Path],
    cli: Callable[..., CliResult],
    override: str,
    key: str,
) -> None:
    result = cli("train", write_config(table_csv("binary")), override)
    assert result.code == 2
    assert key in result.stderr and "Traceback" not in result.stderr


def test_a_run_within_the_profile_warmup_says_nothing_was_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    x, y = regression_data(32)
    config = train_config(epochs=1, batch_size=16, profile={"warmup": 5})
    Trainer(config, checkpoint_dir=tmp_path, profile_dir=tmp_path / "p").fit(
        make_net(), batches(x, y, 16), batches(x, y, 64), RegressionTask(0.0, 1.0)
    )
    assert not (tmp_path / "p").exists()
    assert "within the profile's 5 warm-up steps: nothing was recorded" in caplog.text
