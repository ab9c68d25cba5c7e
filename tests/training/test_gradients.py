"""The flat gradient buffer: the same updates as a plain loop, and the plain path where it must."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.training.test_trainer import (
    N_FEATURES,
    batches,
    fit,
    make_net,
    regression_data,
    train_config,
)
from torch import nn

from mlsmith.training.callbacks import Callback
from mlsmith.training.diagnostics import NonFiniteLossError
from mlsmith.training.gradients import FlatGradients
from mlsmith.training.precision import Precision
from mlsmith.training.step import optimizer_step

ADAMW = {"name": "adamw", "lr": 0.01, "weight_decay": 0.1}


def plain_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    """What the Trainer must equal: AdamW, fresh gradients every step, no buffer."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    for i in range(steps):
        xb, yb = x[i * 16 : (i + 1) * 16], y[i * 16 : (i + 1) * 16]
        nn.functional.mse_loss(model(xb).squeeze(1), yb).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_steps_through_the_buffer_equal_a_plain_loop_bit_for_bit() -> None:
    x, y = (torch.from_numpy(a) for a in regression_data(160))
    reference, model = make_net(), make_net()
    plain_loop(reference, x, y, steps=10)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=0.01, weight_decay=0.1)
    grads = FlatGradients.for_params(params)
    assert grads is not None
    totals = []
    for i in range(10):
        batch = ({"x": x[i * 16 : (i + 1) * 16]}, y[i * 16 : (i + 1) * 16])
        result = optimizer_step(
            [batch],
            forward=model,
            loss_fn=lambda out, t: nn.functional.mse_loss(out.squeeze(1), t),
            optimizer=optimizer,
            precision=Precision(torch.device("cpu")),
            params=params,
            measure=True,
            grads=grads,
        )
        totals.append(float(result.grad_norm))  # type: ignore[arg-type]
    assert grads.installed  # after the first step, every parameter had a gradient
    assert all(p.grad is view for p, view in zip(params, grads.views, strict=True))
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)
    assert all(t > 0 for t in totals)


def test_the_one_reduction_total_is_the_norm_of_the_per_parameter_norms() -> None:
    model = make_net()
    params = list(model.parameters())
    grads = FlatGradients.for_params(params)
    assert grads is not None
    x, y = (torch.from_numpy(a) for a in regression_data(32))
    nn.functional.mse_loss(model(x).squeeze(1), y).backward()
    grads.zero_(torch.optim.SGD(params, lr=0.1))  # the first step decides: installed
    nn.functional.mse_loss(model(x).squeeze(1), y).backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))  # type: ignore[union-attr]
    assert float(grads.total_norm()) == pytest.approx(float(expected), rel=1e-6)  # type: ignore[arg-type]


class HalfUsed(nn.Module):
    """``spare`` never takes part in the forward pass: it has no gradient, ever."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.used = nn.Linear(N_FEATURES, 1)
        self.spare = nn.Linear(N_FEATURES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_a_parameter_without_gradients_keeps_the_plain_path(tmp_path: Path) -> None:
    """AdamW skips a parameter whose gradient is None but would decay one whose gradient is
    zero: the buffer must not turn the first into the second."""
    x, y = regression_data(96)
    model = HalfUsed()
    spare = {k: v.clone() for k, v in model.spare.state_dict().items()}
    config = train_config(epochs=2, optimizer=ADAMW)
    fit(tmp_path, model, config, batches(x, y, 16), batches(x, y, 32))
    for key, value in model.spare.state_dict().items():
        assert torch.equal(value, spare[key]), key


class ZeroGradEveryStep(Callback):
    """A callback that clears gradients its own way: the buffer must notice and step aside."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def on_train_step_end(self, state: object) -> None:
        self.model.zero_grad(set_to_none=True)


def test_a_callback_replacing_gradients_leaves_the_updates_correct(tmp_path: Path) -> None:
    """The buffer steps aside (the norms come from the plain path) and the weights end exactly
    where a run without that callback ends."""
    x, y = regression_data(160)
    config = train_config(optimizer=ADAMW, batch_size=16, epochs=2)
    runs = []
    for name, clear in (("buffer", False), ("cleared", True)):
        model = make_net()
        callbacks = [ZeroGradEveryStep(model)] if clear else []
        trainer, _ = fit(
            tmp_path / name,
            model,
            config,
            batches(x, y, 16),
            batches(x, y, 32),
            callbacks=callbacks,
        )
        runs.append((trainer.step_rows, torch.load(tmp_path / name / "last.pt")["model"]))
    (rows, weights), (cleared_rows, cleared_weights) = runs
    assert [r[4] for r in cleared_rows] == pytest.approx([r[4] for r in rows], rel=1e-5)
    for key, value in weights.items():
        assert torch.equal(cleared_weights[key], value), key


def test_after_training_the_parameters_hold_no_gradient_views(tmp_path: Path) -> None:
    x, y = regression_data(96)
    model = make_net()
    fit(tmp_path, model, train_config(epochs=2), batches(x, y, 16), batches(x, y, 32))
    assert all(p.grad is None for p in model.parameters())


class ExplodesAtStepThree(nn.Module):
    """Finite loss; ``scale``'s gradient is infinite from the third call on."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.healthy = nn.Linear(N_FEATURES, 1)
        self.scale = nn.Parameter(torch.ones(()))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        # d/dscale of sqrt(scale - 1) at scale == 1 is infinite; the value itself is 0.
        kink = torch.sqrt(self.scale - 1.0) if self.calls >= 3 else 0.0 * self.scale
        return self.healthy(x) + kink


def test_a_non_finite_gradient_on_the_buffer_path_still_names_the_layer(tmp_path: Path) -> None:
    x, y = regression_data(96)
    model = ExplodesAtStepThree()
    with pytest.raises(NonFiniteLossError) as error:
        fit(tmp_path, model, train_config(), batches(x, y, 16), batches(x, y, 32))
    message = str(error.value)
    assert "training stopped at step 3 (epoch 1): the gradients became non-finite" in message
    assert "first non-finite gradients in: scale" in message


def test_the_buffer_is_for_dense_uniform_cpu_parameters_only() -> None:
    assert FlatGradients.for_params([]) is None
    mixed = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, dtype=torch.float64))]
    assert FlatGradients.for_params(mixed) is None
    strided = nn.Parameter(torch.zeros(1, 3, 4, 4).to(memory_format=torch.channels_last))
    assert FlatGradients.for_params([strided]) is None
    assert FlatGradients.for_params([nn.Parameter(torch.zeros(3))]) is not None
