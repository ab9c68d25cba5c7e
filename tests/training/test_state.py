"""The loop's state, the one optimizer step, and the callback protocol."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tests.training.test_trainer import batches, fit, make_net, regression_data, train_config
from torch import nn

from mlsmith.models.boosting import RoundState
from mlsmith.training.callbacks import TrainingState
from mlsmith.training.precision import Precision
from mlsmith.training.state import LoopState
from mlsmith.training.step import optimizer_step


def test_loop_state_round_trips_through_its_state_dict() -> None:
    state = LoopState(epochs=5, steps_per_epoch=4)
    state.after_step(torch.tensor(0.5), 16)
    state.after_step(torch.tensor(0.25), 16)
    state.end_epoch({"epoch": 1, "train/loss": 0.375}, next_rng=torch.ByteTensor([1, 2]))
    state.after_step(torch.tensor(1.0), 8)
    state.best_score, state.best_epoch, state.observations = 0.3, 1, ["a note"]
    copy = LoopState(epochs=5, steps_per_epoch=4)
    copy.load_state_dict(state.state_dict())
    assert copy.state_dict().keys() == state.state_dict().keys()
    for key, value in state.state_dict().items():
        other = copy.state_dict()[key]
        assert torch.equal(other, value) if isinstance(value, torch.Tensor) else other == value
    assert (copy.epoch, copy.global_step, copy.step_in_epoch, copy.samples) == (1, 3, 1, 8)
    assert copy.mean_loss() == pytest.approx(1.0)
    assert not copy.done and not copy.epoch_ending


def test_trainer_and_boosting_rounds_are_both_training_states(tmp_path: Path) -> None:
    x, y = regression_data(64)
    trainer, _ = fit(tmp_path, make_net(), train_config(), batches(x, y, 32), batches(x, y, 32))
    assert isinstance(trainer, TrainingState)
    assert isinstance(RoundState(epochs=10, lr=0.1), TrainingState)


def test_the_step_checks_before_the_update_and_raising_keeps_the_weights() -> None:
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    batch = ({"input": torch.ones(4, 3)}, torch.zeros(4, 1))
    seen: list[tuple[float, float]] = []

    def refuse(loss: torch.Tensor, total: torch.Tensor | None, norms: object) -> None:
        assert total is not None
        seen.append((float(loss), float(total)))
        raise RuntimeError("stop before the update")

    with pytest.raises(RuntimeError, match="stop before the update"):
        optimizer_step(
            [batch],
            forward=net,
            loss_fn=nn.functional.mse_loss,
            optimizer=optimizer,
            precision=Precision(torch.device("cpu")),
            measure=True,
            before_update=refuse,
        )
    assert len(seen) == 1 and math.isfinite(seen[0][0]) and seen[0][1] > 0
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_one_step_of_two_micro_batches_equals_one_of_their_union() -> None:
    x, y = torch.randn(6, 3, generator=torch.Generator().manual_seed(1)), torch.randn(6, 1)
    nets = []
    for micro in ([slice(0, 6)], [slice(0, 4), slice(4, 6)]):
        torch.manual_seed(0)
        net = nn.Linear(3, 1)
        result = optimizer_step(
            [({"input": x[s]}, y[s]) for s in micro],
            forward=net,
            loss_fn=nn.functional.mse_loss,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
            precision=Precision(torch.device("cpu")),
            clip=0.5,
        )
        assert result.samples == 6 and result.grad_norm is not None
        nets.append((net, result))
    (one, one_result), (two, two_result) = nets
    assert float(one_result.loss) == pytest.approx(float(two_result.loss), rel=1e-6)
    for a, b in zip(one.parameters(), two.parameters(), strict=True):
        torch.testing.assert_close(a, b)
