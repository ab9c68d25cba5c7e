"""The tasks that find things in images: semantic segmentation and object detection.

Like :mod:`mlsmith.tasks`, a task says what the network's outputs mean: how its loss is taken,
how raw outputs are decoded and scored. Their targets are per image (a class-id mask, a padded
block of boxes), encoded by the data kind's preprocessor rather than from a column, and their
metrics come from :mod:`mlsmith.vision_metrics` with confidence intervals over images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mlsmith.tasks import Task

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from mlsmith.vision_metrics import Boxes


class SceneTask(Task):
    """Segmentation and detection: classes by name, targets encoded by the preprocessor."""

    # Whether the network's validation outputs give a loss (a detector's give detections).
    validation_loss: ClassVar[bool] = True

    def __init__(self, classes: list[str]) -> None:
        self.classes = [str(c) for c in classes]

    def encode(self, target: pd.Series) -> np.ndarray:
        raise TypeError(f"{self.kind} targets are read from files by the data kind, not a column")

    def truth(self, encoded: np.ndarray) -> np.ndarray:
        return encoded

    def labels(self, decoded: np.ndarray) -> np.ndarray:
        return decoded

    def compact(self, output: torch.Tensor) -> torch.Tensor:
        """What is kept of each batch's raw outputs (default: all of them)."""
        return output

    @property
    def metric_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def evaluate(
        self,
        truth: np.ndarray,
        decoded: np.ndarray,
        *,
        resamples: int,
        confidence: float,
        seed: int,
    ) -> dict[str, Any]:
        """The headline metrics with bootstrap intervals over images (``metrics.json``)."""
        raise NotImplementedError

    def metrics(
        self, truth: np.ndarray, decoded: np.ndarray, groups: np.ndarray | None = None
    ) -> dict[str, float]:
        scored = self.evaluate(truth, decoded, resamples=0, confidence=0.95, seed=0)
        return {
            name: float("nan") if scored[name]["value"] is None else float(scored[name]["value"])
            for name in self.metric_names
        }

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "classes": self.classes}


class SegmentationTask(SceneTask):
    """One class per pixel (``classes[0]`` the background); the loss is cross-entropy plus Dice,
    pixels marked 255 (padding, unlabelled) left out."""

    kind = "segmentation"

    def __init__(self, classes: list[str], dice_weight: float = 1.0) -> None:
        super().__init__(classes)
        # A training setting (model.dice_weight), not saved with the task.
        self.dice_weight = dice_weight

    @property
    def n_outputs(self) -> int:
        return len(self.classes)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return ("miou", "dice", "pixel_accuracy")

    def output_shape(self, inputs: dict[str, torch.Tensor], batch_size: int) -> tuple[int, ...]:
        height, width = inputs["image"].shape[-2:]
        return (batch_size, self.n_outputs, int(height), int(width))

    def builtin_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from mlsmith.losses import dice_ce_loss

        return dice_ce_loss(output.float(), target, dice_weight=self.dice_weight)

    def compact(self, output: torch.Tensor) -> torch.Tensor:
        # The class map, not the logits: a split's logits are C x 4 bytes a pixel.
        import torch

        return output.argmax(dim=1).to(torch.uint8)

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """Class maps (N, H, W) as they are, or logits (N, C, H, W) to their argmax."""
        if raw.ndim == 4:
            return raw.argmax(axis=1).astype(np.uint8)
        return raw.astype(np.uint8)

    def evaluate(
        self,
        truth: np.ndarray,
        decoded: np.ndarray,
        *,
        resamples: int,
        confidence: float,
        seed: int,
    ) -> dict[str, Any]:
        from mlsmith.vision_metrics import segmentation_metrics

        return segmentation_metrics(
            list(truth),
            list(decoded),
            self.classes,
            resamples=resamples,
            confidence=confidence,
            seed=seed,
        )


class DetectionTask(SceneTask):
    """Boxes with labels 1..C (label ``i`` is ``classes[i - 1]``) and scores. The network
    computes its own losses in training; in evaluation it gives detections (N, K, 6):
    x_min, y_min, x_max, y_max, score, label (0: no detection)."""

    kind = "detection"
    validation_loss = False

    @property
    def n_outputs(self) -> int:
        return len(self.classes) + 1  # the background is class 0

    @property
    def metric_names(self) -> tuple[str, ...]:
        return ("map_50", "map_50_95")

    def output_shape(self, inputs: dict[str, torch.Tensor], batch_size: int) -> tuple[int, ...]:
        return ()  # in training, the summed losses

    def builtin_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.ndim == 0:  # training: the detector's summed losses, a batch mean
            return output
        return output.new_zeros(())  # evaluation gives detections: no loss to take

    def decode(self, raw: np.ndarray) -> np.ndarray:
        return np.asarray(raw, dtype=np.float32)

    def evaluate(
        self,
        truth: np.ndarray,
        decoded: np.ndarray,
        *,
        resamples: int,
        confidence: float,
        seed: int,
    ) -> dict[str, Any]:
        from mlsmith.vision_metrics import detection_metrics

        return detection_metrics(
            truth_boxes(truth),
            predicted_boxes(decoded),
            self.classes,
            resamples=resamples,
            confidence=confidence,
            seed=seed,
        )


def truth_boxes(encoded: np.ndarray) -> list[Boxes]:
    """Padded (N, M, 5) targets to one :class:`Boxes` per image."""
    from mlsmith.vision_metrics import Boxes

    out = []
    for rows in encoded:
        kept = rows[rows[:, 4] > 0]
        out.append(Boxes(kept[:, :4].astype(np.float64), kept[:, 4].astype(np.int64)))
    return out


def predicted_boxes(decoded: np.ndarray) -> list[Boxes]:
    """Detections (N, K, 6) to one :class:`Boxes` per image, with scores."""
    from mlsmith.vision_metrics import Boxes

    out = []
    for rows in decoded:
        kept = rows[rows[:, 5] > 0]
        out.append(
            Boxes(
                kept[:, :4].astype(np.float64),
                kept[:, 5].astype(np.int64),
                kept[:, 4].astype(np.float64),
            )
        )
    return out


def scene_task_from_dict(state: dict[str, Any]) -> Task:
    """The task ``SceneTask.to_dict`` described."""
    if state["kind"] == "segmentation":
        return SegmentationTask(state["classes"])
    return DetectionTask(state["classes"])
