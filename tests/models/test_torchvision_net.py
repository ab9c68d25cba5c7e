"""Tests for mlsmith.models.torchvision_net: torchvision architectures with a task head,
grayscale input, channels-last, frozen backbones, and pretrained weights from the local cache
(or a clear error naming the file when they are not there and cannot be downloaded)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mlsmith.config import TorchvisionConfig
from mlsmith.errors import ConfigError, MissingExtraError
from mlsmith.models.torchvision_net import (
    PretrainedWeightsError,
    TorchvisionNet,
    weights_file,
)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch cache; downloads go to a closed local port, so they fail at once
    whether or not this machine has a network."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    return home


def _weights(arch: str) -> object:
    import torchvision

    return torchvision.models.get_model_weights(arch).DEFAULT


@pytest.mark.parametrize("channels", [1, 3])
def test_resnet18_shapes_for_gray_and_rgb(channels: int) -> None:
    torch.manual_seed(0)
    net = TorchvisionNet(TorchvisionConfig(arch="resnet18"), channels, 7).eval()
    with torch.no_grad():
        out = net(torch.randn(3, channels, 32, 32))
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    assert isinstance(net.net.fc, nn.Linear) and net.net.fc.out_features == 7


def test_other_architectures_get_a_task_head() -> None:
    torch.manual_seed(0)
    net = TorchvisionNet(TorchvisionConfig(arch="mobilenet_v3_small"), 1, 2).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 32, 32)).shape == (2, 2)
    assert net.net.classifier[-1].out_features == 2


def test_channels_last_matches_the_default_layout() -> None:
    torch.manual_seed(0)
    plain = TorchvisionNet(TorchvisionConfig(arch="resnet18"), 3, 4).eval()
    fast = TorchvisionNet(TorchvisionConfig(arch="resnet18", channels_last=True), 3, 4).eval()
    fast.load_state_dict(plain.state_dict())
    assert fast.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), fast(x), rtol=1e-4, atol=1e-4)


def test_unknown_architecture_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model.arch: .*'resnet81'.*did you mean 'resnet18'"):
        TorchvisionNet(TorchvisionConfig(arch="resnet81"), 3, 2)


def test_missing_pretrained_weights_name_the_file_and_where_to_put_it(torch_home: Path) -> None:
    expected = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert weights_file(_weights("resnet18")) == expected
    with pytest.raises(PretrainedWeightsError) as error:
        TorchvisionNet(TorchvisionConfig(arch="resnet18", pretrained=True), 3, 2)
    message = str(error.value)
    assert "could not be downloaded" in message
    assert str(expected) in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "~/.cache/torch/hub/checkpoints" in message and "$TORCH_HOME" in message
    assert not expected.exists()  # nothing half-downloaded left behind
    assert error.value.exit_code == 2


def test_pretrained_weights_load_from_the_local_cache(torch_home: Path) -> None:
    import torchvision

    torch.manual_seed(1)
    imagenet = torchvision.models.mobilenet_v3_small()  # stands in for the real download
    file = weights_file(_weights("mobilenet_v3_small"))
    file.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), file)

    cfg = TorchvisionConfig(arch="mobilenet_v3_small", pretrained=True, freeze_backbone=True)
    net = TorchvisionNet(cfg, 3, 5)
    torch.testing.assert_close(net.net.features[0][0].weight, imagenet.features[0][0].weight)
    assert net.net.classifier[-1].out_features == 5
    trainable = [name for name, p in net.named_parameters() if p.requires_grad]
    assert trainable == ["net.classifier.3.weight", "net.classifier.3.bias"]
    net.train()
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)  # frozen statistics stay frozen


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "googlenet"])
def test_a_network_built_for_a_checkpoint_needs_no_cached_weights(
    torch_home: Path, arch: str
) -> None:
    """Loading a run trained from pretrained weights rebuilds its network for the checkpoint's
    weights: the cache is not read (it may be absent where the run is loaded), and the network
    computes as the trained one (GoogLeNet keeps the input transform its weights come with)."""
    import torchvision

    from mlsmith.models.neural import weights_from_checkpoint

    torch.manual_seed(1)
    # The real file holds the auxiliary heads too.
    options = {"aux_logits": True, "init_weights": True} if arch == "googlenet" else {}
    file = weights_file(_weights(arch))
    file.parent.mkdir(parents=True)
    torch.save(torchvision.models.get_model_builder(arch)(**options).state_dict(), file)
    cfg = TorchvisionConfig(arch=arch, pretrained=True)
    trained = TorchvisionNet(cfg, 3, 4).eval()
    file.unlink()
    with pytest.raises(PretrainedWeightsError):
        TorchvisionNet(cfg, 3, 4)
    with weights_from_checkpoint():
        loaded = TorchvisionNet(cfg, 3, 4).eval()
    loaded.load_state_dict(trained.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained(x))


def test_a_weights_file_that_is_not_plain_tensors_is_refused(torch_home: Path) -> None:
    file = weights_file(_weights("resnet18"))
    file.parent.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(1), "hook": print}, file)  # needs unpickling code
    with pytest.raises(PretrainedWeightsError, match="not a plain weights file"):
        TorchvisionNet(TorchvisionConfig(arch="resnet18", pretrained=True), 3, 2)


def test_missing_torchvision_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(MissingExtraError, match=r"mlsmith\[vision\]"):
        TorchvisionNet(TorchvisionConfig(), 3, 2)
