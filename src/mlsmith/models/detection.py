"""Object detection networks: torchvision's Faster R-CNN, RetinaNet and FCOS over a chosen
backbone (``model.type: fasterrcnn | retinanet | fcos``), trained from scratch or from the
backbone's ImageNet weights (``model.pretrained``).

The detector itself (pyramid, heads) always starts from scratch. With ``pretrained`` the
torchvision backbones load their default ImageNet weights from the local torch hub cache,
through :func:`~mlsmith.models.torchvision_net.ensure_weights` as classification and
segmentation do: a missing file is an error that names it and where to put it. The backbone is
one of:

- ``small``: five stages (one strided conv3x3-BN-ReLU, then four of two, the first strided;
  16, 32, 64, 64, 64 wide), written here. torchvision's backbones are ImageNet designs: from
  scratch on two CPU cores an epoch of the generated shapes (``bench/detection_net.py``) takes
  them several times as long, for no better a detector within minutes: their width and depth
  pay off with pretrained weights and large images. Like the compact UNet for segmentation,
  this one is for from-scratch work on a CPU, and FCOS over it is the pairing that reaches
  mAP@0.5 >= 0.8 on the shapes within minutes there.
- ``mobilenet_v3_large``, ``mobilenet_v3_small``: torchvision's MobileNetV3 features.
- ``resnet18``, ``resnet34``, ``resnet50``: torchvision's ResNets.

The first convolution takes the images' channel count (1 or 3); a pretrained one given gray
images sums its weights over the colour channels, which is the same as repeating the gray
channel. The backbone hands its feature maps at ``strides`` (the last block at each stride) to
a feature pyramid ``fpn_channels`` wide, with batch norm throughout that keeps learning (from
scratch there are no frozen statistics to keep; pretrained ones start from ImageNet's and
adapt, as in torchvision's segmentation networks). By default
the strides are 4, 8, 16 and 32 for images up to 128 pixels a side, whose objects are a few
to tens of pixels (at stride 8 alone a 10-pixel object falls between anchors), and 8, 16, 32
above. A max-pooled level tops the pyramid; RetinaNet and FCOS take P6 and P7 instead for
images of 256 pixels a side or more. RetinaNet's and FCOS's heads have ``head_convs``
convolutions each (torchvision's four cost twice as much, for nothing on small images).

Anchors fit the image size: by default the smallest is an eighth of the image's shorter side
(at least 8 pixels), doubling per pyramid level; RetinaNet places three scales per octave at
each level, Faster R-CNN one size with three aspect ratios. FCOS has no anchors in the usual
sense: its "anchor" at a level is the level's stride, which sets the range of object sizes each
level learns and the centre-sampling radius, as in the paper.

mlsmith's batches arrive as float tensors, already normalised, at one fixed size: the
detector's own transform is set to subtract 0, divide by 1 and keep the size as it is (an image
of another size is rescaled to fit, aspect kept, and its boxes mapped back).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Any

import torch
from torch import nn

from mlsmith.config.models import PRETRAINED_DETECTION_BACKBONES
from mlsmith.errors import ConfigError, MissingExtraError
from mlsmith.models.neural import NeuralModel, use_pretrained
from mlsmith.models.torchvision_net import ensure_weights

ARCHS = ("fasterrcnn", "retinanet", "fcos")
BACKBONES = ("small", *PRETRAINED_DETECTION_BACKBONES)
# The backbone's feature maps the pyramid can read, by stride.
STRIDES = (4, 8, 16, 32)
# Images up to this side read stride 4 as well: their objects are a few pixels to tens.
FINE_UP_TO = 128
# From this image side on, RetinaNet and FCOS add P6 and P7 (strides 64, 128).
P6P7_FROM = 256
SMALL_WIDTHS = (16, 32, 64, 64, 64)  # stage i halves the size: strides 2, 4, 8, 16, 32


def _torchvision() -> Any:
    try:
        import torchvision
    except ImportError:
        raise MissingExtraError("torchvision", "vision", "Object detection") from None
    return torchvision


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def small_backbone(channels: int, widths: tuple[int, ...] = SMALL_WIDTHS) -> nn.Sequential:
    """The from-scratch backbone: stage ``i`` (a child named ``str(i)``) has stride ``2**(i+1)``.

    The first stage is one strided convolution, the others two: at stride 2 a second one would
    cost two thirds of the whole stride-8 stage, for features no pyramid level reads."""
    stages = [nn.Sequential(*_conv_bn_relu(channels, widths[0], 2))]
    width = widths[0]
    for stage in widths[1:]:
        stages.append(nn.Sequential(*_conv_bn_relu(width, stage, 2), *_conv_bn_relu(stage, stage)))
        width = stage
    body = nn.Sequential(*stages)
    for module in body.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return body


def _replace_first_conv(body: nn.Module, channels: int, pretrained: bool = False) -> None:
    """Make the first convolution take ``channels`` inputs (torchvision's take 3). A
    ``pretrained`` one taking 1 channel keeps its weights summed over the 3: a gray image
    repeated as RGB gives the same output."""
    for name, module in body.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == channels:
                return
            parent_name, _, attribute = name.rpartition(".")
            parent = body.get_submodule(parent_name) if parent_name else body
            conv = nn.Conv2d(
                channels,
                module.out_channels,
                module.kernel_size,  # type: ignore[arg-type]
                stride=module.stride,  # type: ignore[arg-type]
                padding=module.padding,  # type: ignore[arg-type]
                bias=module.bias is not None,
            )
            if pretrained and channels == 1:
                with torch.no_grad():
                    conv.weight.copy_(module.weight.sum(dim=1, keepdim=True))
                    if module.bias is not None:
                        conv.bias.copy_(module.bias)  # type: ignore[union-attr]
            setattr(parent, attribute, conv)
            return


def _pick_levels(
    body: nn.Module, channels: int, strides: tuple[int, ...]
) -> tuple[dict[str, str], list[int]]:
    """For a sequential body: the last child at each of ``strides`` and its channels, found by
    passing a probe image through (in eval mode, so no batch-norm statistics move)."""
    side = 2 * strides[-1]
    x = torch.zeros(1, channels, side, side)
    last: dict[int, tuple[str, int]] = {}
    was_training = body.training
    body.eval()
    with torch.no_grad():
        for name, child in body.named_children():
            x = child(x)
            last[side // x.shape[-1]] = (name, x.shape[1])
    body.train(was_training)
    missing = [s for s in strides if s not in last]
    if missing:
        raise ConfigError(f"model.backbone: no feature map at strides {missing}")
    return (
        {last[s][0]: str(i) for i, s in enumerate(strides)},
        [last[s][1] for s in strides],
    )


def build_backbone(
    name: str,
    channels: int,
    strides: tuple[int, ...],
    fpn_channels: int,
    extra_blocks: nn.Module,
    pretrained: bool = False,
) -> nn.Module:
    """``name``'s feature maps at ``strides`` under a feature pyramid ``fpn_channels`` wide
    (``out_channels``), with ``extra_blocks`` adding levels above; ``pretrained``: the
    backbone starts from its ImageNet weights in the local torch cache."""
    torchvision = _torchvision()
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    if name not in BACKBONES:
        raise ConfigError(f"model.backbone: expected one of {list(BACKBONES)}, found '{name}'")
    weights = None
    if pretrained:
        if name not in PRETRAINED_DETECTION_BACKBONES:
            raise ConfigError(
                f"model.pretrained: model.backbone '{name}' has no pretrained weights; "
                f"choose one of {list(PRETRAINED_DETECTION_BACKBONES)}"
            )
        weights = torchvision.models.get_model_weights(name).DEFAULT
        ensure_weights(weights, name)  # the local file, or an error naming where to put it
    body: nn.Module
    if name == "small":
        body = small_backbone(channels)
        return_layers, in_channels = _pick_levels(body, channels, strides)
    elif name.startswith("mobilenet_v3"):
        # Batch norm that learns: torchvision's detection builders freeze it, which suits
        # pretrained weights on large images only.
        net = getattr(torchvision.models, name)(weights=weights, norm_layer=nn.BatchNorm2d)
        body = net.features
        _replace_first_conv(body, channels, pretrained)
        return_layers, in_channels = _pick_levels(body, channels, strides)
    else:  # a ResNet
        net = getattr(torchvision.models, name)(weights=weights, norm_layer=nn.BatchNorm2d)
        _replace_first_conv(net, channels, pretrained)
        expansion = net.fc.in_features // 512  # 1 for basic blocks, 4 for bottlenecks
        body = net
        layer = {4: 1, 8: 2, 16: 3, 32: 4}  # stride -> layerN
        return_layers = {f"layer{layer[s]}": str(i) for i, s in enumerate(strides)}
        in_channels = [16 * s * expansion for s in strides]  # 64, 128, 256, 512 (x4)
    backbone: nn.Module = BackboneWithFPN(
        body,
        return_layers,
        in_channels,
        fpn_channels,
        extra_blocks=extra_blocks,
        norm_layer=nn.BatchNorm2d,
    )
    return backbone


def default_strides(image_size: tuple[int, int]) -> tuple[int, ...]:
    """The backbone strides the pyramid reads: from 4 for images up to ``FINE_UP_TO`` a side,
    from 8 above (stride 4 costs four times stride 8 and pays only for objects of a few
    pixels)."""
    return STRIDES if min(image_size) <= FINE_UP_TO else STRIDES[1:]


def default_anchor_sizes(image_size: tuple[int, int], levels: int) -> tuple[int, ...]:
    """One anchor size a pyramid level: an eighth of the shorter side (at least 8), doubling."""
    base = max(8, round(min(image_size) / 8))
    return tuple(base * 2**i for i in range(levels))


class DetectionNet(nn.Module):
    """A torchvision detector for ``n_classes`` object classes (labels 1..C, 0 the background).

    ``forward(image, boxes=None)``: ``image`` (B, C, H, W) float, normalised; ``boxes``
    (B, M, 5) float ``x_min, y_min, x_max, y_max, label`` in pixels, rows labelled 0 padding.
    In training mode: the sum of the detector's losses (a 0-dim batch mean), the detached
    components kept in ``last_losses``. In eval mode: (B, max_detections, 6) ``x_min, y_min,
    x_max, y_max, score, label`` by decreasing score, padded with zero rows (label 0).

    ``arch``: ``fasterrcnn | retinanet | fcos``; ``backbone``: one of ``BACKBONES``, from its
    ImageNet weights when ``pretrained`` (not ``small``); ``image_size``: (H, W) of the
    batches; ``channels``: 1 or 3. ``strides``, ``anchor_sizes``: see the module (None: fitted
    to ``image_size``); ``score_threshold`` and ``nms_threshold``: what detections are kept in
    eval mode, at most ``max_detections`` an image (``boxes`` are not read there: torchvision's
    detectors compute no loss in eval mode).
    """

    last_losses: dict[str, torch.Tensor]

    def __init__(
        self,
        arch: str,
        backbone: str,
        n_classes: int,
        image_size: tuple[int, int],
        channels: int,
        *,
        fpn_channels: int = 32,
        head_convs: int = 2,
        strides: tuple[int, ...] | None = None,
        anchor_sizes: tuple[int, ...] | None = None,
        max_detections: int = 100,
        score_threshold: float = 0.05,
        nms_threshold: float = 0.5,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ConfigError(f"model.type: expected one of {list(ARCHS)}, found '{arch}'")
        if n_classes < 1:
            raise ConfigError(f"model: a detector needs at least one class, found {n_classes}")
        self.arch, self.n_classes, self.max_detections = arch, n_classes, max_detections
        # Faster R-CNN's softmax has a background class 0; RetinaNet's and FCOS's sigmoid heads
        # have none (a class 0 would be a real, never-seen class whose low scores still come
        # out as detections): their class k is label k + 1.
        self.label_offset = 0 if arch == "fasterrcnn" else 1
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.last_losses = {}
        _torchvision()
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

        strides = strides or default_strides(self.image_size)
        if list(strides) != sorted(set(strides)) or not set(strides) <= set(STRIDES):
            raise ConfigError(
                f"model.strides: increasing strides among {list(STRIDES)}, found {list(strides)}"
            )
        extra: nn.Module
        if arch != "fasterrcnn" and min(self.image_size) >= P6P7_FROM:
            extra = LastLevelP6P7(fpn_channels, fpn_channels)
            levels = len(strides) + 2
        else:
            # No weights: a level above the last (its max-pooled top) for the largest objects.
            extra = LastLevelMaxPool()
            levels = len(strides) + 1
        body = build_backbone(backbone, channels, strides, fpn_channels, extra, pretrained)
        if arch == "fcos" and anchor_sizes is not None:
            raise ConfigError("model.anchor_sizes: FCOS has no anchors (see model.strides)")
        sizes = anchor_sizes or default_anchor_sizes(self.image_size, levels)
        if arch != "fcos" and len(sizes) != levels:
            raise ConfigError(
                f"model.anchor_sizes: {arch} here has {levels} pyramid levels, one size each; "
                f"found {len(sizes)} sizes {list(sizes)}"
            )
        # The transform keeps images as they come: normalised and at image_size already.
        common: dict[str, Any] = {
            "min_size": min(self.image_size),
            "max_size": max(self.image_size),
            "image_mean": [0.0] * channels,
            "image_std": [1.0] * channels,
        }
        outputs = n_classes + 1 - self.label_offset
        self.detector = _build_detector(
            arch, body, outputs, strides, sizes, levels, head_convs, common, max_detections,
            score_threshold, nms_threshold,
        )  # fmt: skip

    def forward(self, image: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        images = list(image.unbind(0))  # B x (C, H, W): torchvision takes a list
        if self.training:
            if boxes is None:
                raise ValueError("DetectionNet: training mode needs the target boxes")
            losses: dict[str, torch.Tensor] = self.detector(
                images, _targets(boxes, self.label_offset)
            )
            # Kept as tensors: reading them is the caller's choice, no device sync a step.
            self.last_losses = {name: value.detach() for name, value in losses.items()}
            return torch.stack(list(losses.values())).sum()
        detections: list[dict[str, torch.Tensor]] = self.detector(images)
        for found in detections:
            found["labels"] = found["labels"] + self.label_offset
        return pack_detections(detections, self.max_detections, image)


def _build_detector(
    arch: str,
    backbone: nn.Module,
    num_classes: int,
    strides: tuple[int, ...],
    sizes: tuple[int, ...],
    levels: int,
    head_convs: int,
    common: dict[str, Any],
    max_detections: int,
    score_threshold: float,
    nms_threshold: float,
) -> nn.Module:
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    width: int = backbone.out_channels  # type: ignore[assignment]
    if arch == "fasterrcnn":
        from torchvision.models.detection.faster_rcnn import TwoMLPHead
        from torchvision.models.detection.rpn import RPNHead

        anchors = AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * levels)
        # A box head 256 wide, not 1024: from scratch the narrower head learns as well, faster.
        resolution = 7
        detector: nn.Module = FasterRCNN(
            backbone,
            None,  # the class count is the predictor's
            rpn_anchor_generator=anchors,
            rpn_head=RPNHead(width, anchors.num_anchors_per_location()[0]),
            box_head=TwoMLPHead(width * resolution**2, 256),
            box_predictor=_fastrcnn_predictor(256, num_classes),
            # A few objects an image: 128 sampled regions (not 512) teach the box head as well
            # at a quarter of its cost, which dominates a step on a CPU.
            box_batch_size_per_image=128,
            box_detections_per_img=max_detections,
            box_score_thresh=score_threshold,
            box_nms_thresh=nms_threshold,
            **common,
        )
        return detector
    if arch == "retinanet":
        from torchvision.models.detection.retinanet import RetinaNetHead

        octave = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))  # three scales per octave, as in the paper
        anchors = AnchorGenerator(
            tuple(tuple(s * k for k in octave) for s in sizes), ((0.5, 1.0, 2.0),) * levels
        )
        head = RetinaNetHead(
            width,
            anchors.num_anchors_per_location()[0],
            num_classes,
            # Group norm in the heads (torchvision's RetinaNet v2): trains stably from scratch.
            norm_layer=partial(nn.GroupNorm, _groups(width)),
        )
        # torchvision's heads have four convolutions each; fewer cost less and, on small
        # images from scratch, learn as fast (``head_convs``).
        for branch in (head.classification_head, head.regression_head):
            branch.conv = nn.Sequential(*list(branch.conv)[:head_convs])
        detector = RetinaNet(
            backbone,
            num_classes,
            anchor_generator=anchors,
            head=head,
            detections_per_img=max_detections,
            score_thresh=score_threshold,
            nms_thresh=nms_threshold,
            **common,
        )
        return detector
    # Each level's stride, the extra levels' included.
    level_strides = (*strides, 2 * strides[-1], 4 * strides[-1])[:levels]
    anchors = AnchorGenerator(tuple((s,) for s in level_strides), ((1.0,),) * levels)
    from torchvision.models.detection.fcos import (
        FCOSClassificationHead,
        FCOSHead,
        FCOSRegressionHead,
    )

    # FCOSHead fixes group norm at 32 groups: built bare (no convolutions), then given heads
    # whose group norm takes the largest count up to 32 that divides the pyramid's width.
    fcos_head = FCOSHead(width, 1, num_classes, num_convs=0)
    norm = partial(nn.GroupNorm, _groups(width))
    fcos_head.classification_head = FCOSClassificationHead(
        width, 1, num_classes, head_convs, norm_layer=norm
    )
    fcos_head.regression_head = FCOSRegressionHead(width, 1, head_convs, norm_layer=norm)
    detector = FCOS(
        backbone,
        num_classes,
        anchor_generator=anchors,
        head=fcos_head,
        detections_per_img=max_detections,
        score_thresh=score_threshold,
        nms_thresh=nms_threshold,
        **common,
    )
    return detector


def _fastrcnn_predictor(width: int, num_classes: int) -> nn.Module:
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    predictor: nn.Module = FastRCNNPredictor(width, num_classes)
    return predictor


def _groups(width: int) -> int:
    """Group norm's groups: 8 channels each, as torchvision's 32 groups of 256, at most 32
    (a group of one channel would zero a 1x1 map, the top level of small images)."""
    return max(g for g in range(1, min(32, max(1, width // 8)) + 1) if width % g == 0)


def _targets(boxes: torch.Tensor, label_offset: int) -> list[dict[str, torch.Tensor]]:
    """torchvision's per-image targets from the padded (B, M, 5) tensor (label 0: padding),
    ``label_offset`` taken from the labels."""
    targets = []
    for rows in boxes:  # (M, 5)
        keep = rows[:, 4] > 0
        targets.append(
            {"boxes": rows[keep, :4].float(), "labels": rows[keep, 4].long() - label_offset}
        )
    return targets


def pack_detections(
    detections: list[dict[str, torch.Tensor]], max_detections: int, like: torch.Tensor
) -> torch.Tensor:
    """torchvision's per-image detections as one (B, max_detections, 6) tensor, each image's
    rows by decreasing score then zero rows: batches of it concatenate."""
    out = like.new_zeros(len(detections), max_detections, 6)
    for i, found in enumerate(detections):
        order = found["scores"].argsort(descending=True)[:max_detections]
        n = len(order)
        out[i, :n, :4] = found["boxes"][order].to(out.dtype)
        out[i, :n, 4] = found["scores"][order].to(out.dtype)
        out[i, :n, 5] = found["labels"][order].to(out.dtype)
    return out


def unpack_detections(packed: torch.Tensor) -> list[OrderedDict[str, torch.Tensor]]:
    """The inverse of :func:`pack_detections`: per image, ``boxes`` (N, 4), ``scores`` (N,) and
    ``labels`` (N,) int64 of its real detections (label > 0)."""
    out = []
    for rows in packed:  # (K, 6)
        keep = rows[:, 5] > 0
        out.append(
            OrderedDict(
                boxes=rows[keep, :4], scores=rows[keep, 4], labels=rows[keep, 5].round().long()
            )
        )
    return out


class LoggedDetectionNet(DetectionNet):
    """A :class:`DetectionNet` that sums its loss components over an epoch's training steps, so
    the Trainer logs each (``train/loss_classifier``...) beside the total; on the device, no
    synchronisation a step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sums: dict[str, torch.Tensor] = {}
        self._steps = 0

    def forward(self, image: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        output = super().forward(image, boxes)
        if self.training and torch.is_grad_enabled():
            for name, value in self.last_losses.items():
                self._sums[name] = self._sums.get(name, 0) + value
            self._steps += 1
        return output

    def epoch_metrics(self) -> dict[str, float]:
        """Each loss component's mean over the training steps since the last call."""
        means = {f"train/{name}": float(total) / self._steps for name, total in self._sums.items()}
        self._sums, self._steps = {}, 0
        return means


class DetectorModel(NeuralModel):
    """``model.type: fasterrcnn | retinanet | fcos``: a :class:`DetectionNet` trained by the
    Trainer on the detection batches (images and padded boxes)."""

    def build_network(self) -> nn.Module:
        from mlsmith.config import DetectorConfig

        cfg = self.config.model
        if not isinstance(cfg, DetectorConfig):  # mlsmith.families routes by model.type
            raise TypeError(f"DetectorModel got a model section of type '{cfg.type}'")
        spec = self.preprocessor.model_inputs()
        return LoggedDetectionNet(
            cfg.type,
            cfg.backbone,
            len(self.task.classes),
            (spec["height"], spec["width"]),
            spec["channels"],
            max_detections=cfg.max_detections,
            score_threshold=cfg.min_score,
            pretrained=use_pretrained(cfg.pretrained),
        )


class FasterRCNNModel(DetectorModel):
    family = "fasterrcnn"


class RetinaNetModel(DetectorModel):
    family = "retinanet"


class FCOSModel(DetectorModel):
    family = "fcos"
