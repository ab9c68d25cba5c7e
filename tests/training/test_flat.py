"""The flat buffers: the same updates as a plain loop, and the plain path where it must."""

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
from mlsmith.training.checkpoint import LAST, load_checkpoint
from mlsmith.training.diagnostics import NonFiniteLossError
from mlsmith.training.flat import FlatBuffers
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
    flat = FlatBuffers.for_params(params, optimizer)
    assert flat is not None
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
            flat=flat,
        )
        totals.append(float(result.grad_norm))  # type: ignore[arg-type]
    assert flat.installed  # after the first step, every parameter had a gradient
    assert all(p.grad is view for p, view in zip(params, flat.views, strict=True))
    assert optimizer.param_groups[0]["params"] == flat.leaves  # AdamW steps one flat tensor
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)
    assert all(t > 0 for t in totals)


def test_the_one_reduction_total_is_the_norm_of_the_per_parameter_norms() -> None:
    model = make_net()
    params = list(model.parameters())
    flat = FlatBuffers.for_params(params, torch.optim.SGD(params, lr=0.1))
    assert flat is not None
    x, y = (torch.from_numpy(a) for a in regression_data(32))
    nn.functional.mse_loss(model(x).squeeze(1), y).backward()
    flat.before_update()  # the first backward pass decides: installed
    flat.zero_()
    nn.functional.mse_loss(model(x).squeeze(1), y).backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))  # type: ignore[union-attr]
    assert float(flat.total_norm()) == pytest.approx(float(expected), rel=1e-6)  # type: ignore[arg-type]


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
    def sgd(params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.1)

    assert FlatBuffers.for_params([], sgd([nn.Parameter(torch.zeros(1))])) is None
    mixed = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, dtype=torch.float64))]
    assert FlatBuffers.for_params(mixed, sgd(mixed)) is None
    strided = [nn.Parameter(torch.zeros(1, 3, 4, 4).to(memory_format=torch.channels_last))]
    assert FlatBuffers.for_params(strided, sgd(strided)) is None
    plain = [nn.Parameter(torch.zeros(3))]
    assert FlatBuffers.for_params(plain, sgd(plain)) is not None


def without_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Trainer on the plain path: what the buffers must equal."""
    monkeypatch.setattr(FlatBuffers, "for_params", classmethod(lambda cls, *_: None))


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "adamw", "lr": 0.01, "weight_decay": 0.1},
        {"name": "adam", "lr": 0.01},
        {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    ],
)
def test_flat_parameters_train_and_checkpoint_exactly_as_the_plain_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, optimizer: dict[str, object]
) -> None:
    """Same weights and the same per-parameter optimizer state in last.pt, bit for bit, so a
    checkpoint does not tell (or care) which path wrote it."""
    x, y = regression_data(160)
    config = train_config(optimizer=optimizer, batch_size=16, epochs=2)
    checkpoints = {}
    for name in ("flat", "plain"):
        if name == "plain":
            without_buffers(monkeypatch)
        trainer, _ = fit(tmp_path / name, make_net(), config, batches(x, y, 16), batches(x, y, 32))
        checkpoints[name] = load_checkpoint(tmp_path / name / LAST)
        assert trainer.optimizer is not None
        # After fit the optimizer is per parameter again, whichever path ran.
        assert len(trainer.optimizer.param_groups[0]["params"]) > 1 or name == "plain"
    flat, plain = checkpoints["flat"], checkpoints["plain"]
    for key, value in plain["model"].items():
        assert torch.equal(flat["model"][key], value), key
    assert flat["optimizer"]["param_groups"] == plain["optimizer"]["param_groups"]
    assert flat["optimizer"]["state"].keys() == plain["optimizer"]["state"].keys()
    for index, slots in plain["optimizer"]["state"].items():
        assert flat["optimizer"]["state"][index].keys() == slots.keys()
        for key, value in slots.items():
            saved = flat["optimizer"]["state"][index][key]
            assert torch.equal(saved, value), (index, key)
            if key == "step":  # one count per parameter, not one shared tensor
                assert saved.shape == value.shape


def test_a_checkpoint_from_the_plain_path_resumes_on_the_flat_one_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-parameter optimizer state (an older last.pt, or a run on the plain path) is joined
    into the flat buffers on resume; the run ends where an uninterrupted one does."""
    x, y = regression_data(160)
    config = train_config(optimizer=ADAMW, batch_size=16, epochs=3)
    fit(tmp_path / "whole", make_net(), config, batches(x, y, 16), batches(x, y, 32))
    with monkeypatch.context() as patch:
        without_buffers(patch)
        first = train_config(optimizer=ADAMW, batch_size=16, epochs=1)
        fit(tmp_path / "split", make_net(), first, batches(x, y, 16), batches(x, y, 32))
    fit(
        tmp_path / "split",
        make_net(seed=7),  # the weights come from the checkpoint
        config,
        batches(x, y, 16),
        batches(x, y, 32),
        resume=tmp_path / "split" / LAST,
    )
    whole, split = (load_checkpoint(tmp_path / d / LAST)["model"] for d in ("whole", "split"))
    for key, value in whole.items():
        assert torch.equal(split[key], value), key


def test_an_optimizer_it_does_not_know_keeps_its_parameters(tmp_path: Path) -> None:
    """Only element-wise optimizers (SGD, Adam, AdamW) step flat parameters; any other gets flat
    gradients alone and steps the model's own parameters."""
    model = make_net()
    params = list(model.parameters())
    optimizer = torch.optim.RMSprop(params, lr=0.01)
    flat = FlatBuffers.for_params(params, optimizer)
    assert flat is not None
    x, y = (torch.from_numpy(a) for a in regression_data(32))
    nn.functional.mse_loss(model(x).squeeze(1), y).backward()
    flat.before_update()
    optimizer.step()
    assert flat.installed and not flat.leaves
    assert optimizer.param_groups[0]["params"] == params
    assert all(p.grad is view for p, view in zip(params, flat.views, strict=True))


def test_after_training_every_parameter_owns_its_storage(tmp_path: Path) -> None:
    """No parameter is left a view into the flat buffer: saving one tensor saves only it."""
    x, y = regression_data(96)
    model = make_net()
    trainer, _ = fit(
        tmp_path, model, train_config(optimizer=ADAMW), batches(x, y, 16), batches(x, y, 32)
    )
    for p in model.parameters():
        assert p.untyped_storage().nbytes() == p.numel() * p.element_size()
    assert trainer.optimizer is not None
    stepped = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert {id(p) for p in stepped} == {id(p) for p in model.parameters()}
