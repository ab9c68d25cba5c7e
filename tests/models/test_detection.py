"""The detection networks: a finite batch loss with gradients everywhere and its components,
fixed-shape padded detections, images without objects, grayscale input, determinism, pretrained
backbones from the local torch cache (and the errors when they cannot be), and a few generated
scenes learnt."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

from mlsmith.config import FCOSConfig
from mlsmith.data.shapes import CLASSES, draw_scene
from mlsmith.errors import ConfigError
from mlsmith.models.detection import (
    ARCHS,
    DetectionNet,
    pack_detections,
    unpack_detections,
)
from mlsmith.models.torchvision_net import PretrainedWeightsError, weights_file
from mlsmith.vision_metrics import Boxes, detection_metrics

COMPONENTS = {
    "fasterrcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"},
    "retinanet": {"classification", "bbox_regression"},
    "fcos": {"classification", "bbox_regression", "bbox_ctrness"},
}
SIZE = 32


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: these tensors are too small to share, and threads that wait for a
    core spin (OpenMP's default): on a busy two-core machine this file took 4x as long."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def tiny(
    arch: str, channels: int = 3, backbone: str = "small", pretrained: bool = False
) -> DetectionNet:
    # Strides up to 16: at stride 32 a 32-pixel image is one pixel, and batch norm over two
    # single pixels passes no gradient (real batches are larger, and so are real images).
    return DetectionNet(
        arch,
        backbone,
        3,
        (SIZE, SIZE),
        channels,
        fpn_channels=16,
        strides=(4, 8, 16),
        pretrained=pretrained,
    )


def batch(channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images: the first with two objects, the second with one (one padding row)."""
    images = torch.randn(2, channels, SIZE, SIZE)
    boxes = torch.tensor(
        [
            [[2.0, 3.0, 14.0, 15.0, 1.0], [16.0, 18.0, 30.0, 31.0, 3.0]],
            [[8.0, 8.0, 20.0, 24.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0]],
        ]
    )
    return images, boxes


@pytest.mark.parametrize("arch", ARCHS)
def test_training_gives_a_finite_batch_loss_with_gradients_everywhere(arch: str) -> None:
    torch.manual_seed(0)
    net = tiny(arch).train()
    loss = net(*batch())
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert set(net.last_losses) == COMPONENTS[arch]
    assert all(not v.requires_grad and torch.isfinite(v) for v in net.last_losses.values())
    assert loss.item() == pytest.approx(sum(v.item() for v in net.last_losses.values()), rel=1e-5)
    loss.backward()
    missing = [
        name
        for name, p in net.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert not missing


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_gives_fixed_shape_padded_detections_by_score(arch: str) -> None:
    torch.manual_seed(0)
    # A score threshold of 0 so an untrained network finds something to sort.
    net = DetectionNet(
        arch, "small", 3, (SIZE, SIZE), 3, fpn_channels=16, strides=(4, 8, 16), score_threshold=0
    )
    out = net.eval()(batch()[0])
    assert out.shape == (2, 100, 6)
    for rows in out:
        real = rows[:, 5] > 0
        n = int(real.sum())
        assert n > 0 and bool(real[:n].all())  # real rows first, then padding
        assert bool((rows[n:] == 0).all())
        assert bool((rows[:n, 4].diff() <= 0).all())  # by decreasing score
        assert set(rows[:n, 5].tolist()) <= {1.0, 2.0, 3.0}
        assert bool((rows[:n, 2] >= rows[:n, 0]).all() and (rows[:n, 3] >= rows[:n, 1]).all())


@pytest.mark.parametrize("arch", ARCHS)
def test_images_without_objects_train(arch: str) -> None:
    torch.manual_seed(0)
    net = tiny(arch).train()
    images, boxes = batch()
    boxes[1] = 0.0  # the second image has no objects at all
    loss = net(images, boxes)
    assert torch.isfinite(loss)
    loss.backward()
    empty = net(images, torch.zeros(2, 0, 5))  # no image in the batch has any
    assert torch.isfinite(empty)
    empty.backward()


@pytest.mark.parametrize("arch", ARCHS)
def test_grayscale_images(arch: str) -> None:
    torch.manual_seed(0)
    net = tiny(arch, channels=1).train()
    net(*batch(channels=1)).backward()
    assert net.eval()(batch(channels=1)[0]).shape == (2, 100, 6)


@pytest.mark.parametrize("backbone", ["mobilenet_v3_small", "resnet18"])
def test_torchvision_backbones_take_any_channel_count(backbone: str) -> None:
    torch.manual_seed(0)
    net = tiny("fcos", channels=1, backbone=backbone).train()
    assert torch.isfinite(net(*batch(channels=1)))


@pytest.mark.parametrize("arch", ARCHS)
def test_a_seed_gives_the_same_network_twice(arch: str) -> None:
    images, boxes = batch()
    outputs = []
    for _ in range(2):
        torch.manual_seed(0)
        net = tiny(arch).train()
        loss = net(images, boxes)
        net.eval()
        outputs.append((loss.detach(), net(images)))
    assert torch.equal(outputs[0][0], outputs[1][0])
    assert torch.equal(outputs[0][1], outputs[1][1])


@pytest.mark.parametrize(
    ("arch", "side", "levels"),
    [("fcos", 64, 5), ("retinanet", 64, 5), ("fasterrcnn", 256, 4), ("retinanet", 256, 5)],
)
def test_the_pyramid_fits_the_image_size(arch: str, side: int, levels: int) -> None:
    # Up to 128 pixels: strides 4-32 and a pooled level; above: 8-32 and a pooled level
    # (Faster R-CNN) or P6 and P7 (RetinaNet, FCOS).
    net = DetectionNet(arch, "small", 3, (side, side), 3, fpn_channels=16)
    sizes = net.detector.rpn.anchor_generator.sizes if arch == "fasterrcnn" else None
    sizes = sizes or net.detector.anchor_generator.sizes
    assert len(sizes) == levels
    assert sizes[0][0] == max(8, side // 8) or arch == "fcos"


def test_bad_requests_are_refused_clearly() -> None:
    with pytest.raises(ConfigError, match="fasterrcnn"):
        DetectionNet("yolo", "small", 3, (SIZE, SIZE), 3)
    with pytest.raises(ConfigError, match="small"):
        DetectionNet("fcos", "vgg", 3, (SIZE, SIZE), 3)
    with pytest.raises(ConfigError, match="anchor_sizes"):
        DetectionNet("retinanet", "small", 3, (SIZE, SIZE), 3, anchor_sizes=(8, 16))
    with pytest.raises(ConfigError, match="FCOS has no anchors"):
        DetectionNet("fcos", "small", 3, (SIZE, SIZE), 3, anchor_sizes=(8, 16, 32, 64, 128))
    with pytest.raises(ConfigError, match="strides"):
        DetectionNet("fcos", "small", 3, (SIZE, SIZE), 3, strides=(8, 4))
    with pytest.raises(ValueError, match="target boxes"):
        tiny("fcos").train()(batch()[0])


PRETRAINED_MESSAGE = (
    "model.pretrained: true, but model.backbone 'small' (the from-scratch CNN) has no "
    "pretrained weights; ImageNet weights exist for mobilenet_v3_large, mobilenet_v3_small, "
    "resnet18, resnet34, resnet50"
)


def test_pretrained_small_backbone_is_refused_at_config_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Callable[..., Any]
) -> None:
    with pytest.raises(ValidationError, match=re.escape(PRETRAINED_MESSAGE)):
        FCOSConfig(pretrained=True)
    assert FCOSConfig(backbone="resnet18", pretrained=True).pretrained
    # Through the CLI: a user error (exit 2) before any data is read (these paths do not exist).
    monkeypatch.chdir(tmp_path)  # where output_dir (runs/) would be
    config = tmp_path / "detect.yaml"
    raw = {
        "data": {"type": "detection", "path": "images", "annotations": "boxes.csv"},
        "model": {"type": "retinanet", "backbone": "small", "pretrained": True},
    }
    config.write_text(yaml.safe_dump(raw))
    result = cli("train", config)
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert PRETRAINED_MESSAGE in result.stderr
    assert "or set model.pretrained: false" in result.stderr
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_missing_pretrained_backbone_weights_name_the_file(torch_home: Path) -> None:
    expected = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(PretrainedWeightsError) as error:
        tiny("fcos", backbone="resnet18", pretrained=True)
    message = str(error.value)
    assert message.startswith("model.pretrained: the weights of 'resnet18'")
    assert str(expected) in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert not expected.exists()  # nothing half-downloaded left behind
    assert error.value.exit_code == 2


@pytest.mark.parametrize(
    ("backbone", "prefix", "first_conv"),
    [("mobilenet_v3_small", "features.", "0.0.weight"), ("resnet18", "", "conv1.weight")],
)
def test_pretrained_backbones_start_from_the_cached_weights(
    backbone: str, prefix: str, first_conv: str, torch_home: Path
) -> None:
    import torchvision

    torch.manual_seed(1)
    imagenet = getattr(torchvision.models, backbone)()  # stands in for the real download
    saved = imagenet.state_dict()
    file = weights_file(torchvision.models.get_model_weights(backbone).DEFAULT)
    file.parent.mkdir(parents=True)
    torch.save(saved, file)

    torch.manual_seed(2)
    body = tiny("fcos", backbone=backbone, pretrained=True).detector.backbone.body.state_dict()
    assert first_conv in body
    for key, value in body.items():
        torch.testing.assert_close(value, saved[prefix + key], rtol=0, atol=0, msg=key)
    torch.manual_seed(2)
    scratch = tiny("fcos", backbone=backbone).detector.backbone.body.state_dict()
    assert not torch.equal(scratch[first_conv], body[first_conv])  # not the same by chance
    # Gray images: the first convolution sums the colour channels' weights.
    gray = tiny("fcos", channels=1, backbone=backbone, pretrained=True)
    gray_conv = gray.detector.backbone.body.state_dict()[first_conv]
    torch.testing.assert_close(gray_conv, saved[prefix + first_conv].sum(dim=1, keepdim=True))


def test_packed_detections_unpack_to_the_same() -> None:
    found = [
        {
            "boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]),
            "scores": torch.tensor([0.2, 0.9]),
            "labels": torch.tensor([3, 1]),
        },
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0).long()},
    ]
    packed = pack_detections(found, 5, torch.zeros(1))
    assert packed.shape == (2, 5, 6)
    first, second = unpack_detections(packed)
    assert first["scores"].tolist() == pytest.approx([0.9, 0.2])
    assert first["labels"].tolist() == [1, 3]
    assert first["boxes"].tolist() == [[5.0, 6.0, 7.0, 8.0], [1.0, 2.0, 3.0, 4.0]]
    assert len(second["labels"]) == 0


@pytest.mark.slow
def test_a_few_scenes_are_learnt() -> None:
    rng = np.random.default_rng(0)
    scenes = [draw_scene(rng, SIZE, max_side=16) for _ in range(4)]
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float()
    images = (images - images.mean()) / images.std()
    boxes = torch.zeros(len(scenes), 3, 5)
    for i, s in enumerate(scenes):
        boxes[i, : len(s.labels), :4] = torch.from_numpy(s.boxes)
        boxes[i, : len(s.labels), 4] = torch.from_numpy(s.labels).float()
    torch.manual_seed(0)
    net = tiny("fcos").train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(25):  # mAP@0.5 1.0 from step 20 on (0.66 at 10)
        loss = net(images, boxes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        found = unpack_detections(net.eval()(images))
    predictions = [
        Boxes(f["boxes"].numpy(), f["labels"].numpy(), f["scores"].numpy()) for f in found
    ]
    truths = [Boxes(s.boxes, s.labels) for s in scenes]
    metrics = detection_metrics(truths, predictions, CLASSES, resamples=0)
    assert metrics["map_50"]["value"] > 0.5
