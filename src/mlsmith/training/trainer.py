"""The training loop.

``Trainer.fit`` reads top to bottom: set up device, precision, optimizer and schedule; resume if
asked; then for each epoch, optimizer steps over accumulated micro-batches, validation, the
schedule, best/last checkpoints and early stopping. Each feature is a few visible lines in that
order rather than a hook somewhere else.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mlsmith.config import TrainConfig
from mlsmith.data.batches import TensorBatches
from mlsmith.errors import ConfigError, did_you_mean
from mlsmith.training.callbacks import CallbackList, EarlyStopping, improved, resolve_mode
from mlsmith.training.checkpoint import BEST, LAST, load_checkpoint, save_checkpoint
from mlsmith.training.device import resolve_device
from mlsmith.training.diagnostics import (
    NonFiniteLossError,
    OverfitWatch,
    StepMonitor,
    gradient_norms,
    peak_memory_mb,
    precision_advice,
)
from mlsmith.training.optimizers import LRSchedule, build_optimizer
from mlsmith.training.precision import build_precision
from mlsmith.training.reproducibility import restore_rng_states, rng_states, set_deterministic


class Objective(Protocol):
    """What the trainer needs to know about the task (a :class:`mlsmith.tasks.Task` fits)."""

    @property
    def metric_names(self) -> tuple[str, ...]: ...

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    def decode(self, raw: np.ndarray) -> np.ndarray: ...

    def truth(self, encoded: np.ndarray) -> np.ndarray: ...

    def metrics(self, truth: np.ndarray, decoded: np.ndarray) -> dict[str, float]: ...


log = logging.getLogger(__name__)

__all__ = ["FitResult", "NonFiniteLossError", "Objective", "Trainer", "predict_raw"]


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int | None
    best_score: float | None
    stopped_early: bool
    best_checkpoint: Path
    observations: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Trains any ``torch.nn.Module`` whose ``forward(**inputs)`` returns raw outputs."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        checkpoint_dir: str | Path,
        callbacks: Iterable[object] = (),
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.checkpoint_dir = Path(checkpoint_dir)
        self.callbacks = CallbackList(callbacks)
        # Stored in every checkpoint (resolved config, code version...), opaque to the trainer.
        self.metadata = metadata or {}
        self.device = resolve_device(config.device)
        self.precision = build_precision(config.precision, self.device)
        self.monitor = config.checkpoint.monitor
        self.monitor_mode = resolve_mode(self.monitor, config.checkpoint.mode)
        # Loop state, read by callbacks and saved in checkpoints.
        self.epoch = 0  # completed epochs
        self.global_step = 0
        self.step_in_epoch = 0
        self.epochs = config.epochs
        self.steps_per_epoch = 0
        self.history: list[dict[str, float]] = []
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.should_stop = False
        # Device-side running sum of the epoch's loss; read through running_loss() only, so
        # the loop itself never waits for the GPU.
        self._loss_sum: torch.Tensor | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._samples = 0
        # Things a person should know about this run (overfitting...), for the report.
        self.observations: list[str] = []
        self.monitor_steps: StepMonitor | None = None

    # --- the loop -----------------------------------------------------------------------------

    def fit(
        self,
        model: torch.nn.Module,
        train: TensorBatches,
        val: TensorBatches,
        objective: Objective,
        *,
        resume: str | Path | None = None,
    ) -> FitResult:
        """Train ``model`` and return its history; the model ends with the best weights."""
        cfg = self.config
        self._check_monitors(objective)
        set_deterministic(cfg.deterministic)
        model.to(self.device)
        train.to(self.device)
        # val stays on the CPU: predict_raw moves it a batch at a time.
        optimizer = self.optimizer = build_optimizer(model, cfg.optimizer)
        self.steps_per_epoch = train.n_steps(cfg.grad_accum_steps)
        schedule = LRSchedule(
            optimizer,
            cfg.scheduler,
            steps_per_epoch=self.steps_per_epoch,
            epochs=cfg.epochs,
            monitor_mode=self.monitor_mode,
        )
        stopper = EarlyStopping(
            cfg.early_stopping.monitor,
            cfg.early_stopping.mode,
            cfg.early_stopping.patience,
            cfg.early_stopping.min_delta,
        )
        params = [p for p in model.parameters() if p.requires_grad]
        steps = self.monitor_steps = StepMonitor(
            [n for n, p in model.named_parameters() if p.requires_grad],
            self.device,
            scaled=getattr(self.precision, "scaler", None) is not None,
            precision=cfg.precision,
        )
        overfit = OverfitWatch(cfg.overfit_patience)
        inspect_grads = cfg.log_grad_norm or cfg.grad_clip is not None
        # Running sums of the epoch in progress; restored when resuming mid-epoch.
        loss_sum = torch.zeros((), device=self.device)
        samples = 0
        epoch_start_rng = train.generator.get_state()
        if resume is not None:
            state = load_checkpoint(resume, map_location=self.device)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            self.precision.load_state_dict(state["precision"])
            stopper.load_state_dict(state["early_stopping"])
            steps.load_state_dict(state["steps"])
            overfit.load_state_dict(state["overfit"])
            self._load_loop_state(state["loop"])
            loss_sum.fill_(state["loop"]["loss_sum"])
            samples = state["loop"]["samples"]
            epoch_start_rng = state["loop"]["epoch_start_rng"]
            restore_rng_states(state["rng"])
        self._loss_sum, self._samples = loss_sum, samples
        forward = torch.compile(model) if cfg.compile else model

        def save_last(loss_sum: torch.Tensor, samples: int, epoch_start_rng: torch.Tensor) -> None:
            """Everything needed to continue exactly from here, even mid-epoch."""
            state = self._model_state(model)
            state.update(
                optimizer=optimizer.state_dict(),
                schedule=schedule.state_dict(),
                precision=self.precision.state_dict(),
                early_stopping=stopper.state_dict(),
                steps=steps.state_dict(),
                overfit=overfit.state_dict(),
                rng=rng_states(),
                loop={
                    **self._loop_state(),
                    "loss_sum": float(loss_sum.item()),
                    "samples": samples,
                    "epoch_start_rng": epoch_start_rng,
                },
            )
            save_checkpoint(self.checkpoint_dir / LAST, state)

        def at_stake() -> str:
            last = self.checkpoint_dir / LAST
            if last.exists():
                return f"The last good checkpoint, {last}, is intact. "
            return "No checkpoint had been written yet. "

        def check_finite(loss_sum: torch.Tensor, samples: int) -> float:
            """The epoch's mean loss so far; raises before non-finite weights are checkpointed."""
            loss = float(loss_sum.item()) / max(samples, 1)
            if math.isfinite(loss) and all(bool(p.isfinite().all()) for p in model.parameters()):
                return loss
            what = f"loss became {loss}" if not math.isfinite(loss) else "weights became non-finite"
            raise NonFiniteLossError(
                f"training {what} in epoch {self.epoch + 1} (lr "
                f"{optimizer.param_groups[0]['lr']:.3g}). {at_stake()}Likely fixes: lower "
                f"train.optimizer.lr, set train.grad_clip, {precision_advice(cfg.precision)}"
                "or check the inputs for extreme values"
            )

        self.callbacks.call("on_fit_start", self)
        try:
            while self.epoch < cfg.epochs and not self.should_stop:
                model.train()
                train.generator.set_state(epoch_start_rng)
                started = time.perf_counter()
                skip = self.step_in_epoch
                skipped_samples = samples  # resumed mid-epoch: not trained in this process
                for step, micro_batches in enumerate(train.steps(cfg.grad_accum_steps)):
                    if step < skip:
                        continue  # resuming mid-epoch: these steps are already in the weights
                    # Weight each micro-batch's mean loss by its share of the step's samples, so
                    # accumulating A batches of B is the same update as one batch of A*B, partial
                    # last step included. Without accumulation the share is 1 and the maths is
                    # exactly a plain loop's.
                    n_step = sum(len(target) for _, target in micro_batches)
                    step_loss = torch.zeros((), device=self.device)
                    for inputs, target in micro_batches:
                        with self.precision.autocast():
                            output = forward(**inputs)
                            loss = objective.loss(output, target)
                        share = len(target) / n_step
                        self.precision.backward(loss if share == 1 else loss * share)
                        step_loss.add_(loss.detach(), alpha=share)
                    loss_sum.add_(step_loss, alpha=n_step)
                    norms = None
                    if inspect_grads:
                        # Norms of the true (unscaled) gradients, before clipping.
                        self.precision.unscale(optimizer)
                        norms = gradient_norms(params)
                        if cfg.grad_clip is not None:
                            clip_gradients(params, norms, cfg.grad_clip)
                    steps.record(
                        self.global_step + 1,
                        self.epoch + 1,
                        float(optimizer.param_groups[0]["lr"]),
                        step_loss,
                        norms,
                    )
                    if steps.due():
                        # On the CPU this runs every step, before the update: a NaN never
                        # reaches the weights.
                        steps.flush(at_stake())
                    self.precision.step(optimizer)
                    optimizer.zero_grad(set_to_none=True)
                    schedule.after_step()
                    samples += n_step
                    self.global_step += 1
                    self.step_in_epoch = step + 1
                    self._loss_sum, self._samples = loss_sum, samples
                    self.callbacks.call("on_train_step_end", self)
                    every = cfg.checkpoint.every_n_steps
                    if every and self.global_step % every == 0 and step + 1 < self.steps_per_epoch:
                        check_finite(loss_sum, samples)
                        save_last(loss_sum, samples, epoch_start_rng)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()  # honest timing: wait for queued kernels
                train_time = time.perf_counter() - started

                steps.flush(at_stake())
                train_loss = check_finite(loss_sum, samples)
                row = {
                    "epoch": self.epoch + 1,
                    "step": self.global_step,
                    "train/loss": train_loss,
                    **self.validate(model, val, objective),
                    "lr": float(optimizer.param_groups[0]["lr"]),
                    "samples_per_s": (samples - skipped_samples) / train_time
                    if train_time > 0
                    else float("nan"),
                    "epoch_time_s": time.perf_counter() - started,
                    **steps.epoch_stats(self.epoch + 1),
                    "memory_mb": peak_memory_mb(self.device),
                }
                self.history.append(row)
                self.epoch += 1
                self.step_in_epoch = 0
                loss_sum.zero_()
                samples = self._samples = 0
                epoch_start_rng = train.generator.get_state()

                observation = overfit.update(self.epoch, train_loss, row["val/loss"])
                if observation:
                    log.warning("epoch %d: %s", self.epoch, observation)
                    self.observations.append(f"epoch {self.epoch}: {observation}")
                schedule.after_epoch(row[self.monitor])
                if improved(row[self.monitor], self.best_score, self.monitor_mode):
                    self.best_score, self.best_epoch = row[self.monitor], self.epoch
                    save_checkpoint(self.checkpoint_dir / BEST, self._model_state(model))
                if cfg.early_stopping.enabled and stopper.update(row[cfg.early_stopping.monitor]):
                    self.should_stop = True
                save_last(loss_sum, samples, epoch_start_rng)
                self.callbacks.call("on_epoch_end", self, row)
        except BaseException as error:
            self.callbacks.call("on_exception", self, error)
            raise

        stopped_early = self.epoch < cfg.epochs
        best_path = self.checkpoint_dir / BEST
        if not best_path.exists():
            # The monitored metric was never finite: keep the last weights as the best we have.
            save_checkpoint(best_path, self._model_state(model))
        model.load_state_dict(load_checkpoint(best_path, map_location=self.device)["model"])
        self.callbacks.call("on_fit_end", self)
        return FitResult(
            self.history,
            self.best_epoch,
            self.best_score,
            stopped_early,
            best_path,
            observations=list(self.observations),
        )

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group right now (nan before fit)."""
        return float(self.optimizer.param_groups[0]["lr"]) if self.optimizer else math.nan

    @property
    def step_rows(self) -> list[tuple[float, ...]]:
        """One row per optimizer step so far: step, epoch, lr, loss, gradient norm."""
        return self.monitor_steps.rows if self.monitor_steps else []

    @property
    def samples_in_epoch(self) -> int:
        """Training samples seen so far in the current epoch."""
        return self._samples

    def running_loss(self) -> float:
        """Mean training loss of the epoch so far (synchronises with the device)."""
        if self._loss_sum is None or self._samples == 0:
            return float("nan")
        return float(self._loss_sum.item()) / self._samples

    # --- evaluation ---------------------------------------------------------------------------

    def validate(
        self, model: torch.nn.Module, batches: TensorBatches, objective: Objective
    ) -> dict[str, float]:
        """Loss and metrics on ``batches``, predictions gathered batch by batch on the CPU."""
        raw, loss = predict_raw(model, batches, self.precision.autocast, objective)
        decoded = objective.decode(raw)
        metrics = objective.metrics(objective.truth(batches.target.cpu().numpy()), decoded)
        return {"val/loss": loss, **{f"val/{k}": v for k, v in metrics.items()}}

    # --- checkpoints --------------------------------------------------------------------------

    def _model_state(self, model: torch.nn.Module) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "metrics": self.history[-1] if self.history else {},
            **self.metadata,
        }

    def _loop_state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "history": self.history,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "should_stop": self.should_stop,
            "observations": self.observations,
        }

    def _load_loop_state(self, loop: dict[str, Any]) -> None:
        self.epoch = loop["epoch"]
        self.step_in_epoch = loop["step_in_epoch"]
        self.global_step = loop["global_step"]
        self.history = list(loop["history"])
        self.best_score = loop["best_score"]
        self.best_epoch = loop["best_epoch"]
        self.should_stop = loop["should_stop"]
        self.observations = list(loop.get("observations", []))

    def _check_monitors(self, objective: Objective) -> None:
        known = ["train/loss", "val/loss", *(f"val/{m}" for m in objective.metric_names)]
        for key, name in (
            ("train.checkpoint.monitor", self.config.checkpoint.monitor),
            ("train.early_stopping.monitor", self.config.early_stopping.monitor),
        ):
            if name not in known:
                raise ConfigError(
                    f"{key}: unknown metric '{name}'{did_you_mean(name, known)}; "
                    f"available: {', '.join(known)}"
                )


def clip_gradients(
    parameters: list[torch.nn.Parameter], norms: torch.Tensor, max_norm: float
) -> None:
    """``clip_grad_norm_`` reusing the per-parameter norms already computed for logging.

    Same arithmetic as torch's (total norm, ``max_norm / (total + 1e-6)`` clamped at 1), so
    the update matches a plain loop that calls ``clip_grad_norm_``.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    total = torch.linalg.vector_norm(norms)
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    torch._foreach_mul_(grads, scale.to(grads[0].device))


def predict_raw(
    model: torch.nn.Module,
    batches: TensorBatches,
    autocast: Callable[[], AbstractContextManager[Any]] | None = None,
    objective: Objective | None = None,
) -> tuple[np.ndarray, float]:
    """Raw outputs for every row of ``batches`` as a float32 array, and the mean loss if asked.

    Inputs move to the model's device and outputs back to the CPU batch by batch, so a large
    evaluation set never has to fit on the device at once.
    """
    model.eval()
    device = next(model.parameters()).device
    chunks: list[np.ndarray] = []
    loss_sum = torch.zeros((), dtype=torch.float64)
    with torch.inference_mode():
        for batch_inputs, batch_target in batches:
            inputs = {k: v.to(device, non_blocking=True) for k, v in batch_inputs.items()}
            target = batch_target.to(device, non_blocking=True)
            with autocast() if autocast else nullcontext():
                output = model(**inputs)
            if objective is not None:
                loss_sum += objective.loss(output, target).double().cpu() * len(target)
            chunks.append(output.float().cpu().numpy())
    raw = np.concatenate(chunks) if chunks else np.zeros((0, 1), dtype=np.float32)
    return raw, float(loss_sum) / max(len(batches), 1)  # len() counts samples
