"""The ``train:`` section: optimizer, learning-rate schedule, early stopping and checkpoints."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mlsmith.config.base import Mode, Section, is_user_path
from mlsmith.errors import did_you_mean

OPTIMIZERS = ("adamw", "adam", "sgd")
LOSSES = ("default", "focal")


def known_or_path(value: str, known: tuple[str, ...], what: str, example: str) -> str:
    """``value`` when it is a built-in name or a path to your code; else a ValueError naming
    the built-in ones."""
    if value in known or is_user_path(value):
        return value
    raise ValueError(
        f"unknown {what} '{value}'{did_you_mean(value, known)}; one of {', '.join(known)}, or "
        f"a path to your {example}"
    )


class OptimizerConfig(Section):
    """The optimizer; no weight decay on biases and norms."""

    name: str = Field(
        "adamw",
        description="adamw, adam or sgd; or your torch.optim.Optimizer class by path "
        "(my_pkg.optim.Lion, or optim.py:Lion), built as Class(param_groups, lr=lr)",
    )
    lr: float | Literal["auto"] = Field(
        1e-3,
        description="learning rate; auto: a short LR range test before training picks it "
        "(recorded in run.json as lr_auto)",
    )
    weight_decay: float = Field(1e-2, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd only")
    nesterov: bool = Field(False, description="sgd only")
    betas: tuple[float, float] = Field((0.9, 0.999), description="adam and adamw only")

    @field_validator("name")
    @classmethod
    def _known_or_path(cls, value: str) -> str:
        return known_or_path(value, OPTIMIZERS, "optimizer", "optimizer class (my_pkg.optim.Lion)")

    @field_validator("lr", mode="before")
    @classmethod
    def _number_or_auto(cls, value: Any) -> Any:
        # One clear message instead of one per member of the union.
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            raise ValueError("expected a number greater than 0, or auto") from None
        if not number > 0:
            raise ValueError("expected a number greater than 0, or auto")
        return number

    @model_validator(mode="after")
    def _check(self) -> OptimizerConfig:
        if self.name == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0, found momentum=0")
        return self


class SchedulerConfig(Section):
    """The learning-rate schedule, with an optional linear warmup."""

    name: Literal["none", "cosine", "onecycle", "step", "plateau"] = "none"
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear warmup from lr/100, in epochs")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="cosine floor, as a share of lr")
    step_size: int = Field(10, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step: decay factor")
    factor: float = Field(0.1, gt=0.0, lt=1.0, description="plateau: decay factor")
    patience: int = Field(5, ge=0, description="plateau: epochs without improvement")


class EarlyStoppingConfig(Section):
    """Stop when the monitored metric stops improving."""

    enabled: bool = True
    monitor: str = "val/loss"
    mode: Mode = Field("auto", description="auto: min for losses and errors, max otherwise")
    patience: int = Field(10, ge=1)
    min_delta: float = Field(0.0, ge=0.0)


class CheckpointConfig(Section):
    """Which metric picks ``best.pt``, and how often ``last.pt`` is written."""

    monitor: str = Field("val/loss", description="metric that picks best.pt")
    mode: Mode = "auto"
    every_n_steps: int | None = Field(
        None, ge=1, description="also write last.pt every N optimizer steps inside an epoch"
    )


class ProfileConfig(Section):
    """torch.profiler over a few optimizer steps: a Chrome trace and a summary in profile/."""

    steps: int = Field(5, ge=1, description="optimizer steps recorded")
    warmup: int = Field(2, ge=1, description="steps run first and not recorded (allocations...)")


class DistributedConfig(Section):
    """Data-parallel training over several processes, started by torchrun."""

    nproc: int = Field(
        1,
        ge=1,
        description="processes on this node; >1 makes `mlsmith train` launch torchrun itself "
        "(under torchrun, its --nproc-per-node decides)",
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="ddp: every process holds the model, gradients averaged (DDP); fsdp: "
        "parameters, gradients and optimizer state sharded over the processes (FSDP2)",
    )


# "1h30m", "20m", "90s", "1.5h": hours, minutes and seconds, each at most once, in that order.
_NUMBER = r"\d+(?:\.\d*)?"
_DURATION = re.compile(rf"^(?:(?P<h>{_NUMBER})h)?(?:(?P<m>{_NUMBER})m)?(?:(?P<s>{_NUMBER})s)?$")


def parse_duration(value: Any) -> Any:
    """Seconds for a duration such as "1h30m", "20m" or "90s"; numbers (seconds) pass through."""
    if not isinstance(value, str):
        return value
    text = value.strip().replace(" ", "")
    match = _DURATION.match(text)
    if not text or match is None:
        try:
            return float(text)
        except ValueError:
            raise ValueError(
                f"expected a duration such as 90s, 20m or 1h30m, or seconds as a number; "
                f"found '{value}'"
            ) from None
    hours, minutes, seconds = (float(match[unit] or 0) for unit in "hms")
    return hours * 3600 + minutes * 60 + seconds


def format_duration(seconds: float) -> str:
    """``seconds`` the way :func:`parse_duration` reads it: 1h30m, 20m, 90s."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return text + (f"{secs}s" if secs or not text else "")


class TrainConfig(Section):
    """How torch networks train: epochs, batches, precision, device and the loop's parts."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1024, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    grad_accum_steps: int = Field(1, ge=1)
    grad_clip: float | None = Field(None, gt=0.0, description="max global gradient norm")
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    compile: bool = Field(False, description="torch.compile the model")
    deterministic: bool = Field(False, description="deterministic algorithms only")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    drop_last: bool = False
    preflight: bool = Field(
        True, description="quick pre-flight checks before training (see `mlsmith check`)"
    )
    overfit_patience: int = Field(
        3,
        ge=0,
        description="warn when val loss rises while train loss falls this many epochs; 0: off",
    )
    log_grad_norm: bool = Field(True, description="per-step gradient norm (before clipping)")
    layer_grad_norm_every: int = Field(
        50,
        ge=0,
        description="sample each layer's gradient norm every N optimizer steps (and the first) "
        "into steps.csv and the tracker; the report then says whether gradients vanish or "
        "explode; 0: off",
    )
    ema: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="decay of a moving average of the weights (e.g. 0.999) that validation, "
        "best.pt and predictions use; null: off",
    )
    max_time: float | None = Field(
        None,
        gt=0.0,
        description="training time budget (90s, 20m, 1h30m or seconds): stop after the step "
        "that spends it, validate, keep the best checkpoint; counts time before a resume",
    )
    profile: ProfileConfig | None = Field(
        None, description="profile a few optimizer steps into the run's profile/ folder"
    )
    mixup: float = Field(
        0.0, ge=0.0, description="image classification: MixUp's Beta alpha (e.g. 0.2); 0: off"
    )
    cutmix: float = Field(
        0.0, ge=0.0, description="image classification: CutMix's Beta alpha (e.g. 1.0); 0: off"
    )
    gradient_checkpointing: bool = Field(
        False,
        description="recompute activations in the backward pass to save memory (transformer "
        "and torchvision families)",
    )

    @field_validator("loss")
    @classmethod
    def _loss_known_or_path(cls, value: str) -> str:
        return known_or_path(value, LOSSES, "loss", "loss function (my_pkg.losses.focal)")

    @field_validator("max_time", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value)

    class_weights: str | dict[str, float] = Field(
        "none",
        description="classification: weight each class in the loss; auto: n / (classes x "
        "count) on the training split; or {label: weight} for every class",
    )
    sampler: Literal["none", "balanced"] = Field(
        "none",
        description="balanced: draw training rows with replacement, every class equally often "
        "(classification; same number of samples per epoch)",
    )
    loss: str = Field(
        "default",
        description="default: the task's own; focal (classification) down-weights easy rows by "
        "(1 - p)^focal_gamma; or your function (output, target) -> loss by path "
        "(my_pkg.losses.focal, or losses.py:focal)",
    )
    focal_gamma: float = Field(2.0, ge=0.0, description="focal loss focusing exponent")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="classification: share of each target spread over all classes (binary: "
        "toward 0.5)",
    )

    @field_validator("class_weights", mode="before")
    @classmethod
    def _class_weights(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in ("none", "auto"):
                raise ValueError("expected 'none', 'auto' or a mapping {label: weight}")
            return value
        if not isinstance(value, dict):
            raise ValueError("expected 'none', 'auto' or a mapping {label: weight}")
        weights: dict[str, float] = {}
        # YAML reads `{0: 1.0, 1: 9.0}` with integer keys; labels are matched by their text.
        for label, weight in value.items():
            number = isinstance(weight, (int, float)) and not isinstance(weight, bool)
            if not number or not math.isfinite(weight) or weight < 0:
                raise ValueError(f"the weight of class '{label}' must be a number >= 0")
            weights[str(label)] = float(weight)
        if weights and not any(weights.values()):
            raise ValueError("at least one class weight must be positive")
        return weights

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        # YAML reads `precision: 32` as an integer.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value
