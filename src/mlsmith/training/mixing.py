"""MixUp and CutMix (``train.mixup``, ``train.cutmix``) for image classification.

Each training batch's images are blended (MixUp) or patched (CutMix) with the batch's images
rolled by one, and the targets mixed in the same proportion: soft targets, which the tasks'
losses take as they are (cross-entropy accepts class probabilities, binary cross-entropy a
probability). With both on, each batch uses one of the two at random, as timm does. torchvision's
``transforms.v2.MixUp`` and ``CutMix`` do the work; they draw from torch's global RNG, which
checkpoints save, so a resumed run mixes exactly as an uninterrupted one. Validation and
predictions never mix.
"""

from __future__ import annotations

from typing import Any

import torch

from mlsmith.errors import ConfigError

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]


class BatchMixer:
    """Mixes the ``image`` input and the targets of one (micro-)batch."""

    def __init__(self, mixup: float, cutmix: float, objective: Any) -> None:
        from torchvision.transforms import v2

        kind = getattr(objective, "kind", None)
        if kind not in ("binary", "multiclass"):
            key = "train.mixup" if mixup else "train.cutmix"
            raise ConfigError(f"{key}: mixes class labels; this task is {kind or 'not one'}")
        self.binary = kind == "binary"
        classes = 2 if self.binary else int(objective.n_outputs)
        mixers: list[Any] = []
        if mixup:
            mixers.append(v2.MixUp(alpha=mixup, num_classes=classes))
        if cutmix:
            mixers.append(v2.CutMix(alpha=cutmix, num_classes=classes))
        self.mix = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)

    def __call__(self, inputs: dict[str, torch.Tensor], target: torch.Tensor) -> Batch:
        images, soft = self.mix(inputs["image"], target.long())  # soft: (B, C) probabilities
        # Binary tasks have one output and a 0/1 target: the mixed share of class 1.
        return {**inputs, "image": images}, soft[:, 1] if self.binary else soft
