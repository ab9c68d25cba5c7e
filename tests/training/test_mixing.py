"""train.mixup / train.cutmix: mixed images and soft targets the losses accept, an exact resume,
and clear errors where mixing does not apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tests.image_data import image_config, make_images, write_npz
from tests.training.test_trainer import Crash, CrashAt, assert_states_equal, train_config
from torch import nn

import mlsmith
from mlsmith.data.batches import BatchOptions, TensorBatches
from mlsmith.errors import ConfigError
from mlsmith.tasks import BinaryTask, MulticlassTask, RegressionTask
from mlsmith.training.checkpoint import BEST, LAST, load_checkpoint
from mlsmith.training.mixing import BatchMixer
from mlsmith.training.trainer import Trainer

CLASSES = ["a", "b", "c"]


def _images(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=generator), torch.arange(n) % 3


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_multiclass_batches_get_mixed_images_and_soft_targets(mixup: float, cutmix: float) -> None:
    images, target = _images()
    torch.manual_seed(0)
    inputs, soft = BatchMixer(mixup, cutmix, MulticlassTask(CLASSES))({"image": images}, target)
    assert inputs["image"].shape == images.shape and not torch.equal(inputs["image"], images)
    assert soft.shape == (8, 3) and soft.dtype == torch.float32
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(8))
    # Each row mixes its own class with its neighbour's (the batch rolled by one).
    assert (soft.argmax(dim=1) == target).sum() + (soft.argmax(dim=1) == target.roll(1)).sum() >= 8
    logits = torch.randn(8, 3)
    expected = -(soft * logits.log_softmax(dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(MulticlassTask(CLASSES).loss(logits, soft), expected)


def test_binary_targets_become_the_mixed_share_of_class_one() -> None:
    images, target = _images()
    target = (target > 0).float()
    torch.manual_seed(0)
    _, soft = BatchMixer(0.4, 0.0, BinaryTask(["n", "y"]))({"image": images}, target)
    assert soft.shape == (8,) and ((soft >= 0) & (soft <= 1)).all()
    assert not torch.equal(soft, target)
    assert torch.isfinite(BinaryTask(["n", "y"]).loss(torch.randn(8, 1), soft))


def test_a_regression_target_cannot_be_mixed() -> None:
    with pytest.raises(ConfigError, match=r"train\.cutmix: mixes class labels; this task is regr"):
        BatchMixer(0.0, 1.0, RegressionTask(0.0, 1.0))


class TinyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Dropout(0.2), nn.Flatten(), nn.Linear(144, 3)
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(image)


def test_mixing_trains_differently_and_resumes_bit_identically(tmp_path: Path) -> None:
    images, target = _images(96)
    config = train_config(epochs=2, batch_size=8, mixup=0.4, cutmix=1.0)
    config.checkpoint.every_n_steps = 8

    def run(directory: Path, config: Any = config, **options: Any) -> nn.Module:
        torch.manual_seed(0)
        model = TinyConv()
        data = TensorBatches({"image": images}, target, BatchOptions(8, shuffle=True, seed=1))
        val = TensorBatches({"image": images}, target, BatchOptions(32))
        callbacks = [CrashAt(options.pop("crash"))] if "crash" in options else []
        trainer = Trainer(config, checkpoint_dir=directory, callbacks=callbacks)
        trainer.fit(model, data, val, MulticlassTask(CLASSES), **options)
        return model

    reference = run(tmp_path / "ref")
    plain = run(tmp_path / "plain", config=train_config(epochs=2, batch_size=8))
    assert not torch.equal(reference.body[0].weight, plain.body[0].weight)
    with pytest.raises(Crash):
        run(tmp_path / "crash", crash=18)
    assert load_checkpoint(tmp_path / "crash" / LAST)["loop"]["step_in_epoch"] == 4  # mid-epoch
    torch.manual_seed(999)
    resumed = run(tmp_path / "crash", resume=tmp_path / "crash" / LAST)
    assert_states_equal(resumed.state_dict(), reference.state_dict())
    for name in (LAST, BEST):
        ref, again = (
            load_checkpoint(tmp_path / "ref" / name),
            load_checkpoint(tmp_path / "crash" / name),
        )
        assert_states_equal(ref["model"], again["model"])


def test_train_an_image_classifier_with_mixup_and_cutmix(tmp_path: Path) -> None:
    images, labels = make_images(n_per_class=8)
    data = write_npz(tmp_path / "images.npz", images, labels)
    config = image_config(data, tmp_path / "runs")
    config["train"] = {**config["train"], "mixup": 0.2, "cutmix": 1.0}  # type: ignore[dict-item]
    # Reports and the package cost seconds and have nothing to do with mixing.
    config |= {"eval": {"bootstrap": 0, "report": False}, "export": {"package": False}}
    run = mlsmith.train(config, progress=False)
    assert run.info["status"] == "finished"
    assert np.isfinite(run.history["train/loss"]).all()


@pytest.mark.parametrize(("train", "key"), [({"mixup": 0.2}, "mixup"), ({"cutmix": -1}, "cutmix")])
def test_mixing_outside_image_data_or_negative_is_refused(train: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"train\.{key}"):
        mlsmith.config.load_config({"data": {"path": "x.csv", "target": "y"}, "train": train})
