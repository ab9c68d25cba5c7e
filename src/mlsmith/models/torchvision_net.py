"""torchvision classification architectures (resnet, efficientnet, mobilenet, convnext...).

``model.arch`` names any classification model torchvision lists. With ``pretrained: true`` the
architecture's default weights come from the local torch hub cache
(``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``); a missing file is
downloaded when the machine can, and otherwise the error names the file and where to put it.
The weights file is checked to hold tensors only before torchvision loads it. The 1000-class
ImageNet head is replaced by one for the task; ``freeze_backbone`` trains only that head (and
keeps the frozen batch-norm statistics as they were).

Grayscale images feed a 3-channel network by repeating their channel.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from mlsmith.config import TorchvisionConfig
from mlsmith.errors import ConfigError, MissingExtraError, MlsmithError, did_you_mean
from mlsmith.models.checkpointing import checkpoint_stages
from mlsmith.models.neural import NeuralModel, use_pretrained

# Seconds to wait for the weights server before giving up.
DOWNLOAD_TIMEOUT = 30
# Builders whose auxiliary training heads would change what forward() returns.
_AUX_LOGITS = ("googlenet", "inception_v3")
# Where torchvision keeps an architecture's stages as nn.Sequential, first match wins:
# resnet/resnext/wide_resnet, regnet, shufflenet, the many `features` networks (vgg, alexnet,
# squeezenet, densenet, mobilenet, efficientnet, convnext, swin), mnasnet, vit.
_SEQUENTIAL_STAGES = (
    ("layer1", "layer2", "layer3", "layer4"),
    ("trunk_output",),
    ("stage2", "stage3", "stage4"),
    ("features",),
    ("layers",),
    ("encoder.layers",),
)


class PretrainedWeightsError(MlsmithError):
    """Pretrained weights are not available locally and cannot be downloaded."""


def _torchvision() -> Any:
    try:
        import torchvision
    except ImportError:
        raise MissingExtraError("torchvision", "vision", "Image data") from None
    return torchvision


def classification_archs() -> list[str]:
    """Every classification architecture torchvision provides."""
    torchvision = _torchvision()
    archs: list[str] = torchvision.models.list_models(module=torchvision.models)
    return archs


def weights_file(weights: Any) -> Path:
    """Where torch's hub cache keeps (and torchvision looks for) a weights file."""
    name = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def ensure_weights(weights: Any, arch: str) -> Path:
    """The local file holding ``weights``, downloaded if absent and possible; tensors only."""
    file = weights_file(weights)
    if not file.is_file():
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            match = torch.hub.HASH_REGEX.search(file.name)
            previous = socket.getdefaulttimeout()
            socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
            try:
                torch.hub.download_url_to_file(
                    weights.url, str(file), match.group(1) if match else None, progress=False
                )
            finally:
                socket.setdefaulttimeout(previous)
        except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
            raise PretrainedWeightsError(
                f"model.pretrained: the weights of '{arch}' ({weights}) are not in the local torch "
                f"cache and could not be downloaded ({exc}). Download {weights.url} and place it "
                f"at {file} (the torch hub cache: $TORCH_HOME/hub/checkpoints, by default "
                "~/.cache/torch/hub/checkpoints), or set model.pretrained: false"
            ) from None
    try:
        torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # any unpickling or format error: the file is not plain tensors
        raise PretrainedWeightsError(
            f"{file}: not a plain weights file for '{arch}' ({exc}); replace it with {weights.url}"
        ) from None
    return file


def _last_linear(net: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """The parent, attribute name and module of the network's last Linear layer (its head)."""
    found = None
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    if found is None:
        raise ConfigError("model.arch: this architecture has no linear classification head")
    name, module = found
    parent_name, _, attribute = name.rpartition(".")
    return net.get_submodule(parent_name), attribute, module


def _stages(net: nn.Module, arch: str) -> list[nn.Sequential]:
    """The network's sequential stages, for gradient checkpointing."""
    for names in _SEQUENTIAL_STAGES:
        try:
            stages = [net.get_submodule(name) for name in names]
        except AttributeError:
            continue
        if all(isinstance(stage, nn.Sequential) for stage in stages):
            return stages  # type: ignore[return-value]
    raise ConfigError(
        f"train.gradient_checkpointing: model.arch '{arch}' does not keep its blocks in "
        "sequential stages (as resnet, efficientnet, mobilenet, convnext, vgg, vit... do), "
        "so mlsmith cannot checkpoint it; choose one of those or set "
        "train.gradient_checkpointing: false"
    )


class TorchvisionNet(nn.Module):
    """A torchvision network with a task head; ``forward(image)`` like every image family."""

    def __init__(
        self,
        cfg: TorchvisionConfig,
        in_channels: int,
        n_outputs: int,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        torchvision = _torchvision()
        archs = classification_archs()
        if cfg.arch not in archs:
            raise ConfigError(
                f"model.arch: unknown torchvision architecture '{cfg.arch}'"
                f"{did_you_mean(cfg.arch, archs)}; classification architectures: "
                f"{', '.join(archs)}"
            )
        builder = torchvision.models.get_model_builder(cfg.arch)
        if use_pretrained(cfg.pretrained):
            weights = torchvision.models.get_model_weights(cfg.arch).DEFAULT
            ensure_weights(weights, cfg.arch)
            # GoogLeNet and Inception load with their auxiliary heads (their builders refuse
            # aux_logits=False with weights); the heads go afterwards, as without weights.
            self.net = builder(weights=weights, progress=False)
            if cfg.arch in _AUX_LOGITS:
                self.net.aux_logits = False
                for head_name in ("aux1", "aux2", "AuxLogits"):
                    if hasattr(self.net, head_name):
                        setattr(self.net, head_name, None)
        else:
            options: dict[str, Any] = {}
            if cfg.arch in _AUX_LOGITS:
                # What their builders set with weights, said here for a network built to take a
                # checkpoint's weights (which then computes as the trained one did); and
                # init_weights said rather than defaulted: torchvision warns it will change.
                options = {"aux_logits": False, "init_weights": not cfg.pretrained}
                if cfg.pretrained:
                    options["transform_input"] = True
            self.net = builder(weights=None, **options)
        parent, attribute, old = _last_linear(self.net)
        head = nn.Linear(old.in_features, n_outputs)
        # A near-zero head starts every class at the same logit: the first loss is ln(C).
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
        setattr(parent, attribute, head)
        self.expand_gray = in_channels == 1
        self.channels_last = cfg.channels_last
        self.frozen = cfg.freeze_backbone
        if self.frozen:
            for parameter in self.net.parameters():
                parameter.requires_grad_(False)
            for parameter in head.parameters():
                parameter.requires_grad_(True)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        if gradient_checkpointing:
            checkpoint_stages(_stages(self.net, cfg.arch))

    def train(self, mode: bool = True) -> TorchvisionNet:
        super().train(mode)
        if self.frozen:
            # A frozen backbone keeps its batch-norm statistics: its norms stay in eval mode.
            for module in self.net.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # image: (B, C, H, W) float, normalised; C is 1 or 3
        if self.expand_gray:
            image = image.expand(-1, 3, -1, -1)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        output: torch.Tensor = self.net(image)
        return output  # (B, n_outputs)


class TorchvisionModel(NeuralModel):
    family = "torchvision"

    def build_network(self) -> nn.Module:
        cfg = self.config.model
        if not isinstance(cfg, TorchvisionConfig):  # mlsmith.families routes by model.type
            raise TypeError(f"TorchvisionModel got a model section of type '{cfg.type}'")
        spec = self.preprocessor.model_inputs()
        return TorchvisionNet(
            cfg, spec["channels"], self.task.n_outputs, self.config.train.gradient_checkpointing
        )
