"""Optimizers and learning-rate schedules (with linear warmup) from the ``train`` config."""

from __future__ import annotations

import math
from typing import Any

import torch

from mlsmith.config import OptimizerConfig, SchedulerConfig
from mlsmith.config.base import is_user_path
from mlsmith.errors import ConfigError
from mlsmith.user_code import load_class

# Warmup starts from this share of the configured learning rate.
WARMUP_START = 0.01


def optimizer_class(path: str) -> type[torch.optim.Optimizer]:
    """Your optimizer class named by ``train.optimizer.name`` (a ConfigError when it does not
    import or is not a ``torch.optim.Optimizer``)."""
    found: type[torch.optim.Optimizer] = load_class(
        path, "train.optimizer.name", torch.optim.Optimizer, "an optimizer class"
    )
    return found


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD, or your class by path (built with the parameter groups and the
    learning rate); weight decay only on matrices (not biases or norm scales)."""
    if cfg.lr == "auto":  # the pipeline resolves it (a range test) before anything trains
        raise ValueError("train.optimizer.lr is 'auto': resolve it with choose_lr first")
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if is_user_path(cfg.name):
        chosen: Any = optimizer_class(cfg.name)  # its own signature: lr by keyword
        try:
            built: torch.optim.Optimizer = chosen(groups, lr=cfg.lr)
            return built
        except TypeError as exc:
            raise ConfigError(
                f"train.optimizer.name: {cfg.name} cannot be built as "
                f"{chosen.__name__}(param_groups, lr=...): {exc}"
            ) from None
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    adam = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return adam(groups, lr=cfg.lr, betas=cfg.betas)


class LRSchedule:
    """Drives the learning rate: called after every optimizer step and after every epoch.

    Warmup, cosine and step decay are closed-form multipliers of the step count (a LambdaLR),
    so a resumed run computes exactly the same rates. One-cycle is torch's OneCycleLR; plateau is
    ReduceLROnPlateau on the monitored metric, after an optional per-step warmup.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        cfg: SchedulerConfig,
        steps_per_epoch: int,
        epochs: int,
        monitor_mode: str = "min",
    ) -> None:
        self.cfg = cfg
        total = max(1, steps_per_epoch * epochs)
        self.warmup_steps = min(total, round(cfg.warmup_epochs * steps_per_epoch))
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self.per_step: torch.optim.lr_scheduler.LRScheduler | None = None
        self.step_count = 0
        self.optimizer = optimizer
        self.onecycle: dict[str, Any] = {}
        if cfg.name == "onecycle":
            pct = self.warmup_steps / total if self.warmup_steps else 0.3
            max_lrs = [g["lr"] for g in optimizer.param_groups]
            self.onecycle = {"max_lr": max_lrs, "total_steps": total, "pct_start": pct}
            self.per_step = torch.optim.lr_scheduler.OneCycleLR(optimizer, **self.onecycle)
            return
        if cfg.name == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="max" if monitor_mode == "max" else "min",
                factor=cfg.factor,
                patience=cfg.patience,
            )
        warmup, decay_steps = self.warmup_steps, total - self.warmup_steps
        step_every = cfg.step_size * steps_per_epoch

        def multiplier(step: int) -> float:
            if step < warmup:
                return WARMUP_START + (1.0 - WARMUP_START) * step / warmup
            if cfg.name == "cosine":
                progress = min(1.0, (step - warmup) / max(1, decay_steps))
                cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
                return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine
            if cfg.name == "step":
                return cfg.gamma ** (step // step_every)
            return 1.0

        if cfg.name != "none" or warmup:
            self.per_step = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)

    def after_step(self) -> None:
        self.step_count += 1
        if self.per_step is None:
            return
        # Under plateau the multiplier only runs the warmup; after it the plateau owns the rate.
        if self.plateau is None or self.step_count <= self.warmup_steps:
            self.per_step.step()

    def after_epoch(self, metric: float) -> None:
        after_warmup = self.step_count > self.warmup_steps
        if self.plateau is not None and after_warmup and math.isfinite(metric):
            self.plateau.step(metric)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "per_step": self.per_step.state_dict() if self.per_step else None,
            "plateau": self.plateau.state_dict() if self.plateau else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = state["step_count"]
        if self.onecycle:
            # Rebuilt at the saved position rather than loaded: a loaded one-cycle keeps the
            # saved run's length, and train.epochs may grow on resume (stepping past that length
            # raises). It reads its bounds from the optimizer's restored groups. Rebuilding sets
            # this step's rate and momentum from the new length; the step about to run keeps the
            # saved ones, as a loaded schedule would (the same at the same length).
            groups = self.optimizer.param_groups
            kept = ("lr", "momentum", "betas")
            saved: list[dict[str, Any]] = [{k: g[k] for k in kept if k in g} for g in groups]
            self.per_step = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, **self.onecycle, last_epoch=self.step_count - 1
            )
            for group, values in zip(groups, saved, strict=True):
                group.update(values)
        elif self.per_step is not None and state["per_step"] is not None:
            self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None and state["plateau"] is not None:
            self.plateau.load_state_dict(state["plateau"])
