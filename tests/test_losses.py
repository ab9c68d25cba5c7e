"""Classification losses: focal loss, label smoothing and class weights against their formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mlsmith.losses import LossOptions, binary_loss, multiclass_loss
from mlsmith.tasks import BinaryTask, MulticlassTask


def logits_and_targets(n_classes: int, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(n_classes)
    logits = 3.0 * torch.randn(n, max(n_classes, 1), generator=generator)
    if n_classes == 1:
        return logits, torch.randint(2, (n,), generator=generator).float()
    return logits, torch.randint(n_classes, (n,), generator=generator)


def test_default_options_keep_the_plain_losses_bit_for_bit() -> None:
    """The default loss is computed exactly as before these options existed."""
    logits, target = logits_and_targets(4)
    task = MulticlassTask(["a", "b", "c", "d"])
    assert task.loss_options.is_plain
    assert torch.equal(task.loss(logits, target), F.cross_entropy(logits, target))
    logit, binary = logits_and_targets(1)
    expected = F.binary_cross_entropy_with_logits(logit.squeeze(-1), binary)
    assert torch.equal(BinaryTask(["n", "y"]).loss(logit, binary), expected)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_focal_with_gamma_zero_is_cross_entropy(smoothing: float) -> None:
    logits, target = logits_and_targets(5)
    focal = multiclass_loss(logits, target, LossOptions(focal_gamma=0.0, label_smoothing=smoothing))
    expected = F.cross_entropy(logits, target, label_smoothing=smoothing)
    torch.testing.assert_close(focal, expected, rtol=1e-6, atol=1e-6)

    logit, binary = logits_and_targets(1)
    soft = binary * (1 - smoothing) + 0.5 * smoothing
    focal = binary_loss(logit, binary, LossOptions(focal_gamma=0.0, label_smoothing=smoothing))
    expected = F.binary_cross_entropy_with_logits(logit.squeeze(-1), soft)
    torch.testing.assert_close(focal, expected, rtol=1e-6, atol=1e-6)


def test_focal_down_weights_confident_rows_by_the_paper_formula() -> None:
    """One row per case: FL = -(1 - p_t)^gamma log p_t (Lin et al. 2017)."""
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    target = torch.tensor([0, 1])
    p_t = torch.softmax(logits, -1)[torch.arange(2), target]
    for gamma in (1.0, 2.0, 5.0):
        options = LossOptions(focal_gamma=gamma)
        loss = multiclass_loss(logits, target, options)
        expected = (-((1 - p_t) ** gamma) * p_t.log()).mean()
        torch.testing.assert_close(loss, expected)
        assert loss < F.cross_entropy(logits, target)
    logit = torch.tensor([[3.0], [-1.0]])
    binary = torch.tensor([1.0, 1.0])
    p = torch.sigmoid(logit.squeeze(-1))
    loss = binary_loss(logit, binary, LossOptions(focal_gamma=2.0))
    torch.testing.assert_close(loss, (-((1 - p) ** 2) * p.log()).mean())


def test_focal_is_finite_for_extreme_logits() -> None:
    logit = torch.tensor([[80.0], [-80.0]], requires_grad=True)
    loss = binary_loss(logit, torch.tensor([0.0, 1.0]), LossOptions(focal_gamma=2.0))
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(logit.grad).all()


def test_label_smoothing_moves_the_targets() -> None:
    """Binary targets move toward 0.5; a confident right answer then costs more than it did, and
    the loss's minimum sits at the smoothed target, not at 0 or 1."""
    target = torch.tensor([1.0])
    options = LossOptions(label_smoothing=0.2)
    confident = torch.tensor([[6.0]])
    assert binary_loss(confident, target, options) > binary_loss(confident, target, LossOptions())
    # The smoothed target is 0.9: its logit minimises the loss.
    best = torch.tensor([[math.log(0.9 / 0.1)]], requires_grad=True)
    binary_loss(best, target, options).backward()
    assert abs(best.grad.item()) < 1e-6
    # Multiclass: each row puts 1 - s + s/C on its class, s/C on the others.
    logits, classes = logits_and_targets(3)
    smoothed = multiclass_loss(logits, classes, LossOptions(label_smoothing=0.3))
    log_p = F.log_softmax(logits, -1)
    soft = F.one_hot(classes, 3) * 0.7 + 0.1
    torch.testing.assert_close(smoothed, -(soft * log_p).sum(-1).mean())


def test_class_weights_scale_each_row_by_its_class() -> None:
    """Mean of weight x row loss (not divided by the weights' sum), for both task kinds."""
    logits, target = logits_and_targets(3)
    weights = (0.5, 2.0, 4.0)
    loss = multiclass_loss(logits, target, LossOptions(weights=weights))
    per_row = F.cross_entropy(logits, target, reduction="none")
    torch.testing.assert_close(loss, (per_row * torch.tensor(weights)[target]).mean())
    logit, binary = logits_and_targets(1)
    loss = binary_loss(logit, binary, LossOptions(weights=(1.0, 9.0)))
    per_row = F.binary_cross_entropy_with_logits(logit.squeeze(-1), binary, reduction="none")
    torch.testing.assert_close(loss, (per_row * (1.0 + 8.0 * binary)).mean())


def test_weighted_loss_keeps_accumulation_exact() -> None:
    """Two halves' losses, each weighted by its share, sum to the whole batch's loss: the
    Trainer's gradient accumulation stays equal to one large batch."""
    logits, target = logits_and_targets(3, n=10)
    options = LossOptions(weights=(0.2, 1.0, 5.0), focal_gamma=2.0, label_smoothing=0.1)
    whole = multiclass_loss(logits, target, options)
    parts = [
        multiclass_loss(logits[s], target[s], options) * (len(target[s]) / 10)
        for s in (slice(0, 3), slice(3, 10))
    ]
    torch.testing.assert_close(sum(parts), whole)
