"""Model checks on handcrafted networks: gradient flow, initial loss, output shape, overfitting."""

from __future__ import annotations

import torch
from torch import nn

from mlsmith.checks import CheckResult
from mlsmith.checks.cost import training_cost
from mlsmith.checks.model import (
    forward_backward,
    gradient_flow,
    initial_loss,
    overfit_one_batch,
    parameter_counts,
)
from mlsmith.config import OptimizerConfig, TrainConfig
from mlsmith.losses import LossOptions
from mlsmith.tasks import BinaryTask, MulticlassTask, RegressionTask

THREE = MulticlassTask(["a", "b", "c"])


def batch(rows: int = 16, features: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, features, generator=generator)
    y = torch.randint(0, 3, (rows,), generator=generator)
    return x, y


class Net(nn.Module):
    """Two layers and a near-zero head; ``detach`` cuts the graph after the first layer."""

    def __init__(self, outputs: int = 3, *, detach: bool = False, unused: bool = False) -> None:
        super().__init__()
        self.first = nn.Linear(5, 8)
        self.second = nn.Linear(8, 8)
        self.head = nn.Linear(8, outputs)
        self.spare = nn.Linear(8, 8) if unused else None  # registered, never called
        self.detach = detach
        nn.init.normal_(self.head.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.first(x))  # (B, 8)
        if self.detach:
            hidden = hidden.detach()
        return self.head(torch.relu(self.second(hidden)))  # (B, outputs)


class Scaled(nn.Module):
    """A linear layer whose outputs are multiplied by ``scale`` (inf: a broken layer)."""

    def __init__(self, scale: float, outputs: int = 3) -> None:
        super().__init__()
        self.linear = nn.Linear(5, outputs)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scale  # (B, outputs)


def step(network: nn.Module, task: object = THREE) -> dict[str, CheckResult]:
    x, y = batch()
    if isinstance(task, BinaryTask | RegressionTask):
        y = y.clamp(max=1).float()
    results, _ = forward_backward(network, {"x": x}, y, task)  # type: ignore[arg-type]
    return {r.name: r for r in results}


# --- gradient flow ----------------------------------------------------------------------------


def test_a_healthy_network_passes_every_step_check() -> None:
    results = step(Net())
    assert [r.status for r in results.values()] == ["pass"] * 4
    assert list(results) == [
        "forward and backward",
        "output shape",
        "initial loss",
        "gradient flow",
    ]
    assert "all 6 trainable tensors" in results["gradient flow"].detail


def test_a_detached_layer_is_named() -> None:
    result = step(Net(detach=True))["gradient flow"]
    assert result.status == "fail"
    assert "no gradient reaches first.weight, first.bias" in result.detail
    assert "detached" in result.detail
    assert "second" not in result.detail


def test_an_unused_parameter_is_named() -> None:
    result = step(Net(unused=True))["gradient flow"]
    assert result.status == "fail"
    assert "spare.weight, spare.bias" in result.detail


def test_frozen_parameters_are_listed_not_failed() -> None:
    network = Net()
    network.first.requires_grad_(False)
    result = step(network)["gradient flow"]
    assert result.status == "pass"
    assert "all 4 trainable tensors" in result.detail
    assert "2 frozen tensors (first.weight, first.bias)" in result.detail


def test_a_zero_initialised_head_is_not_a_dead_layer() -> None:
    # Everything before a zero head gets an exactly zero first gradient; a second pass after
    # one small step shows the gradient flows.
    network = Net()
    nn.init.zeros_(network.head.weight)
    assert step(network)["gradient flow"].status == "pass"


def test_a_layer_that_never_gets_a_gradient_fails() -> None:
    network = Net()
    with torch.no_grad():
        network.second.weight.fill_(-1.0)  # every ReLU after `second` is dead
        network.second.bias.fill_(-10.0)
    x, _ = batch()
    network(x).sum().backward()
    result = gradient_flow(network)
    assert result.status == "fail"
    assert "zero gradient in first.weight, first.bias, second.weight, second.bias" in result.detail


def test_a_non_finite_gradient_fails() -> None:
    network = Net()
    x, _ = batch()
    (network(x).sum() * float("inf")).backward()
    result = gradient_flow(network)
    assert result.status == "fail"
    assert "non-finite gradient in" in result.detail


# --- loss and shape ---------------------------------------------------------------------------


def test_an_infinite_loss_fails_and_stops_the_model_checks() -> None:
    x, y = batch()
    results, healthy = forward_backward(Scaled(float("inf")), {"x": x}, y, THREE)
    assert not healthy
    loss = {r.name: r for r in results}["initial loss"]
    assert loss.status == "fail"
    assert "loss is nan" in loss.detail or "loss is inf" in loss.detail


def test_huge_initial_outputs_warn_with_the_likely_reason() -> None:
    result = step(Scaled(1000.0))["initial loss"]
    assert result.status == "warn"
    assert "expected about ln(3) = 1.099" in result.detail
    assert "initialise the last layer near zero" in result.detail


def test_binary_and_regression_expectations() -> None:
    binary = step(Net(outputs=1), BinaryTask(["no", "yes"]))["initial loss"]
    assert binary.status == "pass" and "ln(2) = 0.693" in binary.detail
    regression = step(Scaled(50.0, outputs=1), RegressionTask(0.0, 1.0))["initial loss"]
    assert regression.status == "warn"
    assert "mean square" in regression.detail


def test_a_suspiciously_low_initial_loss_warns() -> None:
    y = torch.zeros(8)
    result = initial_loss(0.01, torch.zeros(8, 1), y, BinaryTask(["no", "yes"]))
    assert result.status == "warn"
    assert "leaked target" in result.detail


def test_focal_loss_and_class_weights_move_the_expected_initial_loss() -> None:
    """Focal loss (with class weights) of uniform predictions is well below ln(2): the check
    expects that loss, with no false "leaked target"."""
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    focal = BinaryTask(["no", "yes"])
    focal.loss_options = LossOptions(focal_gamma=2.0, weights=(1.0, 1.5))
    zeros = torch.zeros(4, 1)
    loss = float(focal.loss(zeros, y))
    result = initial_loss(loss, zeros, y, focal)
    assert result.status == "pass" and "configured loss of uniform predictions" in result.detail
    assert initial_loss(loss, zeros, y, BinaryTask(["no", "yes"])).status == "warn"


def test_an_output_shape_mismatch_fails() -> None:
    results = step(Net(outputs=2))  # 3 classes, 2 outputs
    assert list(results) == ["output shape"]
    assert results["output shape"].status == "fail"
    assert "outputs (16, 2) for a batch of 16; multiclass needs (batch, 3)" in (
        results["output shape"].detail
    )


def test_a_forward_pass_that_raises_fails_with_the_error() -> None:
    x, y = batch(features=4)  # the network expects 5 features
    results, healthy = forward_backward(Net(), {"x": x}, y, THREE)
    assert not healthy
    assert results[0].name == "forward and backward" and results[0].status == "fail"
    assert "raised RuntimeError" in results[0].detail


def test_parameter_counts() -> None:
    network = Net()
    network.first.requires_grad_(False)
    result = parameter_counts(network)
    assert result.detail == "99 trainable, 48 frozen"


# --- one-batch overfitting and cost -----------------------------------------------------------


def test_overfitting_one_batch_passes_with_a_sensible_learning_rate() -> None:
    torch.manual_seed(0)
    x, y = batch()
    result = overfit_one_batch(Net(), {"x": x}, y, THREE, OptimizerConfig(lr=0.01))
    assert result.status == "pass"
    assert result.detail.startswith("loss 1.")
    assert "steps on 16 rows" in result.detail


def test_overfitting_with_label_smoothing_is_judged_without_it() -> None:
    """Smoothed targets keep the loss above a floor (0.64 for s=0.3 over 3 classes); the check
    memorises on the plain loss and passes, and leaves the task's own options alone."""
    torch.manual_seed(0)
    x, y = batch()
    smoothed = MulticlassTask(["a", "b", "c"])
    smoothed.loss_options = LossOptions(label_smoothing=0.3)
    result = overfit_one_batch(Net(), {"x": x}, y, smoothed, OptimizerConfig(lr=0.01))
    assert result.status == "pass"
    assert smoothed.loss_options.label_smoothing == 0.3


def test_overfitting_fails_with_an_absurdly_low_learning_rate_and_lists_causes() -> None:
    torch.manual_seed(0)
    x, y = batch()
    result = overfit_one_batch(Net(), {"x": x}, y, THREE, OptimizerConfig(lr=1e-9))
    assert result.status == "fail"
    assert "after 1000 steps" in result.detail and "at lr 1e-09" in result.detail
    assert "learning rate too low" in result.detail and "regularisation" in result.detail


def test_overfitting_out_of_time_is_inconclusive() -> None:
    x, y = batch()
    result = overfit_one_batch(Net(), {"x": x}, y, THREE, OptimizerConfig(lr=1e-9), max_seconds=0.0)
    assert result.status == "warn"
    assert "inconclusive" in result.detail


def test_training_cost_extrapolates_to_the_run() -> None:
    x, y = batch(rows=40)
    batches = [({"x": x[i : i + 8]}, y[i : i + 8]) for i in range(0, 32, 8)]
    cfg = TrainConfig(epochs=7, batch_size=8, grad_accum_steps=2)
    result = training_cost(Net(), batches, THREE, cfg, torch.device("cpu"), n_train=100)
    assert result.group == "cost" and result.status == "pass"
    assert "/step x 7 steps/epoch x 7 epochs ≈ " in result.detail  # ceil(100 / 16) steps
    assert "early stopping may end sooner" in result.detail
    assert "processes" not in result.detail


def test_training_cost_shares_each_step_between_the_processes() -> None:
    """train.distributed.nproc=4: the global batch is 4 x 16, so an epoch has 1/4 the steps."""
    x, y = batch(rows=40)
    batches = [({"x": x[i : i + 8]}, y[i : i + 8]) for i in range(0, 32, 8)]
    cfg = TrainConfig(epochs=7, batch_size=8, grad_accum_steps=2, distributed={"nproc": 4})
    result = training_cost(Net(), batches, THREE, cfg, torch.device("cpu"), n_train=100)
    assert "/step x 2 steps/epoch x 7 epochs ≈ " in result.detail  # ceil(100 / 64) steps
    assert "4 processes, each assumed as fast as this one" in result.detail
