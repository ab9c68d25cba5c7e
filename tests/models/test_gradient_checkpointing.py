"""train.gradient_checkpointing: the same outputs, gradients and batch-norm statistics as the
plain network, fewer tensors kept for the backward pass, and a clear error where it cannot
apply."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from tests.models.test_transformer import MAX_LENGTH, VOCAB, _batch
from torch import nn

from mlsmith.config import TorchvisionConfig, TransformerConfig
from mlsmith.errors import ConfigError
from mlsmith.models.torchvision_net import TorchvisionNet
from mlsmith.models.transformer import TextTransformer


def _train_step(net: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Output and the number of tensors autograd saved; gradients land in ``net``."""
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += 1
        return tensor

    net.train()
    torch.manual_seed(1)  # the same dropout masks for both networks
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = net(**inputs)
    output.square().sum().backward()
    return output.detach(), saved


def _assert_same_training(
    build: Callable[[bool], nn.Module], inputs: dict[str, torch.Tensor]
) -> None:
    plain, checkpointed = build(False), build(True)
    assert plain.state_dict().keys() == checkpointed.state_dict().keys()
    checkpointed.load_state_dict(plain.state_dict())
    expected, saved_plain = _train_step(plain, inputs)
    output, saved = _train_step(checkpointed, inputs)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers(), strict=True):
        assert torch.equal(a, b), name  # batch norm counted each batch once
    assert saved < saved_plain / 2  # the activations really were dropped
    # Evaluation runs the plain path.
    plain.eval(), checkpointed.eval()
    with torch.no_grad():
        torch.testing.assert_close(checkpointed(**inputs), plain(**inputs))


def test_transformer_layers_recompute_with_equal_outputs_and_gradients() -> None:
    cfg = TransformerConfig(dim=16, depth=3, heads=2, dropout=0.2)

    def build(checkpointing: bool) -> nn.Module:
        torch.manual_seed(0)
        return TextTransformer(VOCAB, MAX_LENGTH, 3, cfg, gradient_checkpointing=checkpointing)

    _assert_same_training(build, _batch([6, 2, 16, 0]))


@pytest.mark.parametrize("arch", ["resnet18", "mnasnet0_5"])
def test_torchvision_stages_recompute_with_equal_outputs_and_gradients(arch: str) -> None:
    """resnet's layer1-4, and mnasnet's `layers` with batch norm and in-place ReLUs."""
    cfg = TorchvisionConfig(arch=arch)

    def build(checkpointing: bool) -> nn.Module:
        return TorchvisionNet(cfg, 3, 4, gradient_checkpointing=checkpointing)

    _assert_same_training(build, {"image": torch.randn(2, 3, 32, 32)})


def test_an_architecture_without_sequential_stages_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"train\.gradient_checkpointing: model\.arch 'maxvit_t'"):
        TorchvisionNet(TorchvisionConfig(arch="maxvit_t"), 3, 2, gradient_checkpointing=True)
