"""Tests for mlsmith.models.cnn: the small CNN's shapes, depth, channels-last and first loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mlsmith.config import CNNConfig
from mlsmith.models.cnn import SmallCNN


@pytest.mark.parametrize(
    ("channels", "size", "outputs"), [(1, (28, 28), 10), (3, (33, 17), 4), (1, (8, 8), 1)]
)
def test_output_shape_for_any_input_size(
    channels: int, size: tuple[int, int], outputs: int
) -> None:
    torch.manual_seed(0)
    net = SmallCNN(channels, outputs, CNNConfig(channels=[8, 16, 32], depth=1))
    out = net(torch.randn(5, channels, *size))
    assert out.shape == (5, outputs)
    assert torch.isfinite(out).all()


def test_depth_sets_the_convolutions_per_block() -> None:
    net = SmallCNN(1, 3, CNNConfig(channels=[4, 8], depth=3))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    pools = [m for m in net.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(convs) == 6 and len(pools) == 2
    assert [c.out_channels for c in convs] == [4, 4, 4, 8, 8, 8]


def test_channels_last_gives_the_same_outputs_and_gradients() -> None:
    cfg = CNNConfig(channels=[8, 16], depth=2, dropout=0.0)
    torch.manual_seed(0)
    plain = SmallCNN(3, 5, cfg)
    fast = SmallCNN(3, 5, cfg.model_copy(update={"channels_last": True}))
    fast.load_state_dict(plain.state_dict())
    conv = next(m for m in fast.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not next(m for m in plain.modules() if isinstance(m, nn.Conv2d)).weight.is_contiguous(
        memory_format=torch.channels_last
    )
    x = torch.randn(4, 3, 20, 20)
    a, b = plain(x), fast(x)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    a.sum().backward()
    b.sum().backward()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-4, msg=name)


def test_first_loss_is_near_log_of_the_class_count() -> None:
    torch.manual_seed(0)
    net = SmallCNN(1, 10, CNNConfig())
    loss = nn.functional.cross_entropy(net(torch.randn(64, 1, 28, 28)), torch.randint(10, (64,)))
    assert loss.item() == pytest.approx(math.log(10), abs=0.05)
