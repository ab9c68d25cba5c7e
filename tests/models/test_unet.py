"""The compact UNet and the Dice + cross-entropy loss: shapes at any size, the first loss near
ln(C), gradients everywhere, and one batch of generated shapes learnt."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlsmith.data.shapes import draw_scene
from mlsmith.models.unet import UNet, dice_ce_loss


@pytest.mark.parametrize("size", [(64, 64), (37, 50), (1, 8)])
def test_logits_have_the_image_size_whatever_it_is(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = UNet(3, 4, widths=(8, 16, 32))
    out = net(torch.randn(2, 3, *size))
    assert out.shape == (2, 4, *size)


def test_the_first_loss_is_near_ln_c_and_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    net = UNet(3, 4, widths=(8, 16))
    target = torch.randint(0, 4, (2, 32, 32))
    loss = dice_ce_loss(net(torch.randn(2, 3, 32, 32)), target, dice_weight=0.0)
    assert loss.item() == pytest.approx(math.log(4), rel=0.02)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_ignored_pixels_change_nothing() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 4, 4))
    masked = target.clone()
    masked[0, 0] = 255
    other = logits.clone()
    other[0, :, 0] = 100.0  # wild logits where the pixels are ignored
    assert dice_ce_loss(other, masked).item() == pytest.approx(dice_ce_loss(logits, masked).item())
    assert dice_ce_loss(logits, masked).item() != pytest.approx(dice_ce_loss(logits, target).item())


def test_a_perfect_prediction_has_a_near_zero_dice_term() -> None:
    target = torch.randint(0, 3, (2, 8, 8))
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert dice_ce_loss(logits, target).item() < 0.01


def test_one_batch_of_shapes_is_learnt() -> None:
    rng = np.random.default_rng(0)
    scenes = [draw_scene(rng, 32, max_side=16) for _ in range(4)]
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float()
    images = (images - images.mean()) / images.std()
    masks = torch.from_numpy(np.stack([s.mask for s in scenes]))
    torch.manual_seed(0)
    net = UNet(3, 4, widths=(8, 16, 32))
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        optimizer.zero_grad()
        loss = dice_ce_loss(net(images), masks)
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(images).argmax(1) == masks).float().mean().item()
    assert accuracy > 0.95


def test_the_head_can_start_at_the_class_frequencies() -> None:
    net = UNet(3, 3, (4, 8), class_frequencies=[0.8, 0.2, 0.0])
    # Each class's logit starts at its log frequency (an absent class at a floor, not -inf).
    expected = torch.tensor([0.8, 0.2, 1e-4]).div(1.0001).log()
    torch.testing.assert_close(net.head.bias.detach(), expected)
    probabilities = net(torch.zeros(1, 3, 8, 8)).softmax(dim=1)[0, :, 0, 0]
    torch.testing.assert_close(probabilities, torch.tensor([0.8, 0.2, 0.0]), atol=0.02, rtol=0)
