"""Segmentation families: mlsmith's compact UNet (``model.type: unet``) and torchvision's FCN and
DeepLabV3 (``fcn``, ``deeplabv3``). Each network maps ``image`` (B, C, H, W), normalised, to
logits (B, classes, H, W); :class:`~mlsmith.vision_tasks.SegmentationTask` takes the loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlsmith.config import DeepLabConfig, FCNConfig, UNetConfig
from mlsmith.models.neural import NeuralModel, use_pretrained
from mlsmith.models.torchvision_net import _torchvision, ensure_weights


class UNetModel(NeuralModel):
    family = "unet"

    def build_network(self) -> nn.Module:
        from mlsmith.models.unet import UNet

        cfg = self.config.model
        if not isinstance(cfg, UNetConfig):  # mlsmith.families routes by model.type
            raise TypeError(f"UNetModel got a model section of type '{cfg.type}'")
        spec = self.preprocessor.model_inputs()
        return UNet(
            spec["channels"],
            self.task.n_outputs,
            tuple(cfg.widths),
            class_frequencies=spec.get("class_frequencies"),
        )


class TorchvisionSegmentationNet(nn.Module):
    """torchvision's FCN or DeepLabV3, without the auxiliary head, giving the ``out`` logits."""

    def __init__(self, cfg: FCNConfig | DeepLabConfig, in_channels: int, n_classes: int) -> None:
        super().__init__()
        torchvision = _torchvision()
        name = f"{cfg.type}_{cfg.backbone}"
        builder = torchvision.models.get_model_builder(name)
        options: dict[str, Any] = {"weights": None, "num_classes": n_classes, "aux_loss": False}
        if use_pretrained(cfg.pretrained):
            backbone = cfg.backbone
            weights = torchvision.models.get_model_weights(backbone).DEFAULT
            ensure_weights(weights, backbone)
            options["weights_backbone"] = weights
        else:
            options["weights_backbone"] = None
        self.net = builder(**options)
        self.expand_gray = in_channels == 1

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.expand_gray:
            image = image.expand(-1, 3, -1, -1)
        out: torch.Tensor = self.net(image)["out"]
        return out


class TorchvisionSegmenter(NeuralModel):
    """``model.type: fcn | deeplabv3``."""

    def build_network(self) -> nn.Module:
        cfg = self.config.model
        if not isinstance(cfg, FCNConfig | DeepLabConfig):  # mlsmith.families routes by type
            raise TypeError(f"TorchvisionSegmenter got a model section of type '{cfg.type}'")
        spec = self.preprocessor.model_inputs()
        return TorchvisionSegmentationNet(cfg, spec["channels"], self.task.n_outputs)


class FCNModel(TorchvisionSegmenter):
    family = "fcn"


class DeepLabModel(TorchvisionSegmenter):
    family = "deeplabv3"
