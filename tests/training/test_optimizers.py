"""Optimizers from the config, and learning-rate schedules step by step."""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest
import torch
from torch import nn

from mlsmith.config import OptimizerConfig, SchedulerConfig
from mlsmith.training.optimizers import WARMUP_START, LRSchedule, build_optimizer

LR = 0.1


def make_schedule(
    name: str, *, steps: int, epochs: int, mode: str = "min", **options: Any
) -> tuple[torch.optim.Optimizer, LRSchedule]:
    param = nn.Parameter(torch.zeros(2, 2))
    optimizer = torch.optim.SGD([param], lr=LR, momentum=0.9)
    cfg = SchedulerConfig(name=name, **options)
    return optimizer, LRSchedule(
        optimizer, cfg, steps_per_epoch=steps, epochs=epochs, monitor_mode=mode
    )


def drive(
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    *,
    steps: int,
    epochs: range,
    metric: Callable[[int], float] = lambda epoch: 1.0,
) -> list[list[float]]:
    """The lr used by every optimizer step, per epoch, running the trainer's call order."""
    per_epoch = []
    for epoch in epochs:
        rates = []
        for _ in range(steps):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.after_step()
        schedule.after_epoch(metric(epoch))
        per_epoch.append(rates)
    return per_epoch


def flat(per_epoch: list[list[float]]) -> list[float]:
    return [lr for epoch in per_epoch for lr in epoch]


def lr_sequence(
    name: str,
    *,
    steps: int = 4,
    epochs: int = 5,
    metric: Callable[[int], float] = lambda epoch: 1.0,
    mode: str = "min",
    **options: Any,
) -> list[list[float]]:
    optimizer, schedule = make_schedule(name, steps=steps, epochs=epochs, mode=mode, **options)
    return drive(optimizer, schedule, steps=steps, epochs=range(epochs), metric=metric)


# --- schedules ----------------------------------------------------------------------------------


def test_none_is_constant() -> None:
    assert flat(lr_sequence("none")) == [LR] * 20


def test_none_with_warmup_ramps_linearly_then_holds() -> None:
    rates = flat(lr_sequence("none", warmup_epochs=1))
    expected_ramp = [LR * (WARMUP_START + (1 - WARMUP_START) * s / 4) for s in range(4)]
    assert rates[:4] == pytest.approx(expected_ramp)
    assert rates[0] == pytest.approx(LR / 100)
    assert rates[4:] == pytest.approx([LR] * 16)


def test_cosine_warms_up_then_decays_to_the_floor() -> None:
    optimizer, schedule = make_schedule(
        "cosine", steps=4, epochs=5, warmup_epochs=1, min_lr_ratio=0.1
    )
    rates = flat(drive(optimizer, schedule, steps=4, epochs=range(5)))
    # Warmup: 4 steps from lr/100 up towards lr.
    assert rates[0] == pytest.approx(LR * WARMUP_START)
    assert all(a < b for a, b in pairwise(rates[:5]))
    assert rates[4] == pytest.approx(LR)
    # Decay over the remaining 16 steps: non-increasing, halfway at the mean of peak and floor.
    decay = rates[4:]
    assert all(a >= b for a, b in pairwise(decay))
    assert rates[12] == pytest.approx(LR * (0.1 + 0.9 * 0.5))
    # After the very last step the rate has reached the floor, min_lr_ratio * lr.
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * LR)
    assert min(decay) > 0.1 * LR


def test_onecycle_rises_to_the_peak_then_anneals() -> None:
    optimizer, schedule = make_schedule("onecycle", steps=4, epochs=5, warmup_epochs=1)
    rates = flat(drive(optimizer, schedule, steps=4, epochs=range(5)))
    peak = rates.index(max(rates))
    assert max(rates) == pytest.approx(LR)
    assert peak == 3  # the warmup share of the cycle: 4 of 20 steps
    assert rates[0] == pytest.approx(LR / 25)  # torch's default div_factor
    assert all(a < b for a, b in pairwise(rates[: peak + 1]))
    assert all(a > b for a, b in pairwise(rates[peak:]))
    assert rates[-1] < LR / 1000


def test_onecycle_without_warmup_peaks_at_30_percent() -> None:
    rates = flat(lr_sequence("onecycle", steps=10, epochs=2))
    assert rates.index(max(rates)) in (5, 6)


def test_step_decays_every_step_size_epochs() -> None:
    per_epoch = lr_sequence("step", step_size=2, gamma=0.5)
    for epoch, rates in enumerate(per_epoch):
        assert rates == pytest.approx([LR * 0.5 ** (epoch // 2)] * 4)


def test_plateau_cuts_the_rate_when_the_metric_stalls() -> None:
    # The monitored value never improves after the first epoch: with patience 1 the rate is
    # cut once two epochs in a row have failed to improve, then again two epochs later.
    per_epoch = lr_sequence("plateau", epochs=6, factor=0.5, patience=1)
    firsts = [rates[0] for rates in per_epoch]
    assert firsts == pytest.approx([LR, LR, LR, LR / 2, LR / 2, LR / 4])
    assert all(len(set(rates)) == 1 for rates in per_epoch)  # constant inside an epoch


@pytest.mark.parametrize(("mode", "cut"), [("max", False), ("min", True)])
def test_plateau_follows_the_monitor_mode(mode: str, cut: bool) -> None:
    rising = lr_sequence("plateau", epochs=5, patience=0, mode=mode, metric=float)
    assert (rising[-1][0] < LR) is cut


def test_plateau_waits_for_its_warmup() -> None:
    per_epoch = lr_sequence("plateau", epochs=5, warmup_epochs=2, factor=0.5, patience=0)
    rates = flat(per_epoch)
    assert rates[0] == pytest.approx(LR * WARMUP_START)
    assert rates[:8] == sorted(rates[:8]) and rates[7] < LR  # ramping over 2 warmup epochs
    # After warmup the plateau owns the rate: its first epoch sets the baseline, then each
    # epoch of the stalled metric cuts the rate.
    assert per_epoch[2] == pytest.approx([LR] * 4)
    assert per_epoch[3] == pytest.approx([LR] * 4)
    assert per_epoch[4] == pytest.approx([LR / 2] * 4)


# --- state round trip -------------------------------------------------------------------------

SCHEDULES = [
    ("none", {"warmup_epochs": 1.5}),
    ("cosine", {"warmup_epochs": 1, "min_lr_ratio": 0.05}),
    ("onecycle", {"warmup_epochs": 1}),
    ("step", {"step_size": 1, "gamma": 0.7}),
    ("plateau", {"warmup_epochs": 1, "patience": 0, "factor": 0.5}),
]


def zigzag(epoch: int) -> float:
    return [3.0, 2.0, 2.5, 1.0, 1.5, 1.7][epoch]


def run_steps(
    optimizer: torch.optim.Optimizer, schedule: LRSchedule, *, steps: int, start: int, stop: int
) -> list[float]:
    """Global optimizer steps [start, stop), with the epoch-end call after every ``steps``."""
    rates = []
    for k in range(start, stop):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.after_step()
        if (k + 1) % steps == 0:
            schedule.after_epoch(zigzag((k + 1) // steps - 1))
    return rates


@pytest.mark.parametrize(("name", "options"), SCHEDULES, ids=[s[0] for s in SCHEDULES])
@pytest.mark.parametrize("stop_at", [8, 9, 13], ids=["epoch-boundary", "mid-epoch", "later"])
def test_state_dict_round_trip_continues_the_same_sequence(
    name: str, options: dict[str, Any], stop_at: int
) -> None:
    steps, epochs = 4, 6
    total = steps * epochs
    optimizer, schedule = make_schedule(name, steps=steps, epochs=epochs, **options)
    reference = run_steps(optimizer, schedule, steps=steps, start=0, stop=total)
    reference.append(optimizer.param_groups[0]["lr"])

    optimizer, schedule = make_schedule(name, steps=steps, epochs=epochs, **options)
    seen = run_steps(optimizer, schedule, steps=steps, start=0, stop=stop_at)
    saved = (optimizer.state_dict(), schedule.state_dict())
    # A fresh optimizer and schedule, as a resumed process builds them, then the saved state.
    optimizer, schedule = make_schedule(name, steps=steps, epochs=epochs, **options)
    optimizer.load_state_dict(saved[0])
    schedule.load_state_dict(saved[1])
    seen += run_steps(optimizer, schedule, steps=steps, start=stop_at, stop=total)
    seen.append(optimizer.param_groups[0]["lr"])
    assert seen == reference  # exact: a resumed run computes the same rates
    assert len(set(reference)) > 1


@pytest.mark.parametrize("name", ["onecycle", "cosine"])
def test_schedule_resumes_into_more_epochs(name: str) -> None:
    """Resuming a finished run with more train.epochs continues on the longer schedule."""
    steps = 4
    optimizer, schedule = make_schedule(name, steps=steps, epochs=2, warmup_epochs=1)
    drive(optimizer, schedule, steps=steps, epochs=range(2))
    saved = (optimizer.state_dict(), schedule.state_dict())

    longer_opt, longer = make_schedule(name, steps=steps, epochs=4, warmup_epochs=1)
    expected = flat(drive(longer_opt, longer, steps=steps, epochs=range(4)))[2 * steps :]
    optimizer, schedule = make_schedule(name, steps=steps, epochs=4, warmup_epochs=1)
    optimizer.load_state_dict(saved[0])
    schedule.load_state_dict(saved[1])
    continued = flat(drive(optimizer, schedule, steps=steps, epochs=range(2, 4)))
    # The first step still uses the rate stored with the optimizer (the short schedule's last);
    # from the next step on the rates are the longer schedule's.
    assert continued[0] == saved[0]["param_groups"][0]["lr"]
    assert continued[1:] == pytest.approx(expected[1:])
    assert schedule.step_count == 4 * steps


# --- optimizers -------------------------------------------------------------------------------


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(5, 3)
        self.linear = nn.Linear(3, 4)
        self.layer_norm = nn.LayerNorm(4)
        self.batch_norm = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 1)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_weight_decay_only_on_matrices() -> None:
    model = Mixed()
    optimizer = build_optimizer(model, OptimizerConfig(name="adamw", weight_decay=0.03))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.03 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in decay["params"]}
    assert ids == {id(model.embedding.weight), id(model.linear.weight), id(model.head.weight)}
    expected = {
        id(model.linear.bias),
        id(model.layer_norm.weight),
        id(model.layer_norm.bias),
        id(model.batch_norm.weight),
        id(model.batch_norm.bias),
        id(model.head.bias),
    }
    assert {id(p) for p in no_decay["params"]} == expected
    # Frozen parameters are not optimised at all.
    every = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(model.frozen.weight) not in every and id(model.frozen.bias) not in every


def test_no_decay_group_is_left_out_when_empty() -> None:
    optimizer = build_optimizer(nn.Linear(3, 2, bias=False), OptimizerConfig())
    assert len(optimizer.param_groups) == 1


def test_bias_is_not_decayed_by_a_step() -> None:
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, OptimizerConfig(name="adamw", lr=0.1, weight_decay=0.5))
    bias, weight = model.bias.detach().clone(), model.weight.detach().clone()
    model.weight.grad = torch.zeros_like(model.weight)
    model.bias.grad = torch.zeros_like(model.bias)
    optimizer.step()
    assert torch.equal(model.bias, bias)  # zero gradient, no decay: unchanged
    torch.testing.assert_close(model.weight.detach(), weight * (1 - 0.1 * 0.5))


@pytest.mark.parametrize(
    ("config", "cls"),
    [
        ({"name": "adamw", "lr": 3e-4, "betas": (0.8, 0.95), "weight_decay": 0.1}, "AdamW"),
        ({"name": "adam", "lr": 2e-3, "betas": (0.85, 0.9), "weight_decay": 0.0}, "Adam"),
        (
            {"name": "sgd", "lr": 0.5, "momentum": 0.7, "nesterov": True, "weight_decay": 1e-4},
            "SGD",
        ),
    ],
)
def test_optimizer_uses_the_configured_hyper_parameters(config: dict[str, Any], cls: str) -> None:
    optimizer = build_optimizer(nn.Linear(3, 2), OptimizerConfig(**config))
    assert type(optimizer).__name__ == cls
    decay, no_decay = optimizer.param_groups
    for group in (decay, no_decay):
        assert group["lr"] == config["lr"]
        if cls == "SGD":
            assert group["momentum"] == 0.7 and group["nesterov"] is True
        else:
            assert tuple(group["betas"]) == config["betas"]
    assert decay["weight_decay"] == config["weight_decay"]
    assert no_decay["weight_decay"] == 0.0


def test_warmup_longer_than_training_is_capped() -> None:
    rates = flat(lr_sequence("cosine", steps=2, epochs=2, warmup_epochs=10))
    assert rates == sorted(rates)  # all warmup, never decaying
    assert math.isclose(rates[0], LR * WARMUP_START)
