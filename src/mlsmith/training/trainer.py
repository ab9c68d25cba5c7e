"""The training loop.

``Trainer.fit`` reads top to bottom: set up device, precision, optimizer and schedule; resume if
asked; then for each epoch, optimizer steps over accumulated micro-batches, validation, the
schedule, best/last checkpoints and early stopping. Each feature is a few visible lines in that
order rather than a hook somewhere else; the optional ones (a moving average of the weights, a
time budget, the profiler) cost one ``is not None`` test per step when off.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mlsmith.config import TrainConfig
from mlsmith.config.train import format_duration
from mlsmith.data.batches import TensorBatches
from mlsmith.errors import ConfigError, RunError, did_you_mean
from mlsmith.training import distributed, sharding
from mlsmith.training.callbacks import CallbackList, EarlyStopping, improved, resolve_mode
from mlsmith.training.checkpoint import BEST, LAST, load_checkpoint, save_checkpoint
from mlsmith.training.device import resolve_device
from mlsmith.training.diagnostics import (
    NonFiniteLossError,
    OverfitWatch,
    StepMonitor,
    all_finite,
    at_stake,
    gpu_stats,
    gradient_flow,
    out_of_memory,
    out_of_memory_error,
    peak_memory_mb,
    precision_advice,
)
from mlsmith.training.ema import WeightAverage
from mlsmith.training.flat import FlatBuffers
from mlsmith.training.mixing import BatchMixer
from mlsmith.training.optimizers import LRSchedule, build_optimizer
from mlsmith.training.precision import Precision, build_precision
from mlsmith.training.profiling import StepProfiler
from mlsmith.training.reproducibility import restore_rng_states, rng_states, set_deterministic
from mlsmith.training.state import LoopState
from mlsmith.training.step import optimizer_step


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
    # Trained under FSDP: the network passed to fit is left in shards (best.pt is whole).
    sharded: bool = False


class Trainer:
    """Trains any ``torch.nn.Module`` whose ``forward(**inputs)`` returns raw outputs.

    It is the :class:`~mlsmith.training.callbacks.TrainingState` its callbacks receive: the
    counters below read the :class:`~mlsmith.training.state.LoopState` of the fit in progress.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        checkpoint_dir: str | Path,
        callbacks: Iterable[object] = (),
        metadata: dict[str, Any] | None = None,
        profile_dir: str | Path | None = None,
    ) -> None:
        self.config = config
        self.checkpoint_dir = Path(checkpoint_dir)
        # Where train.profile writes its trace and summary.
        self.profile_dir = Path(profile_dir) if profile_dir else self.checkpoint_dir / "profile"
        self.callbacks = CallbackList(callbacks)
        # Stored in every checkpoint (resolved config, code version...), opaque to the trainer.
        self.metadata = metadata or {}
        self.device = resolve_device(config.device)
        self.precision = build_precision(config.precision, self.device)
        self.monitor = config.checkpoint.monitor
        self.monitor_mode = resolve_mode(self.monitor, config.checkpoint.mode)
        self.state = LoopState(epochs=config.epochs, steps_per_epoch=0, device=self.device)
        self.optimizer: torch.optim.Optimizer | None = None
        self.monitor_steps: StepMonitor | None = None
        self._lr = math.nan
        self.world = distributed.World()
        self.sharded = False  # train.distributed.strategy fsdp over several processes
        self._clock = time.monotonic()  # when training began, less the time before a resume

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
        world = self.world = distributed.current()
        model.to(self.device)
        train.to(self.device)  # val stays on the CPU: predict_raw moves it a batch at a time
        # Several processes: each takes its share of every step and of validation.
        train.shard(world.rank, world.size)
        val.shard(world.rank, world.size)
        # train.distributed.strategy: DDP wraps the model, FSDP shards it in place.
        self.sharded = world.active and cfg.distributed.strategy == "fsdp"
        replica = None
        if self.sharded:
            # FSDP's mixed-precision policy casts the weights: no autocast on top of it.
            self.precision = Precision(self.device)
            sharding.shard(distributed.sync_batch_norm(model, self.device), cfg.precision)
        elif world.active:
            replica = distributed.replicate(model, self.device)
        if world.rank:
            # Rank 0's weights reach every rank through DDP; dropout should not draw the same
            # masks on every rank's share, so each rank after 0 gets a stream of its own.
            torch.manual_seed(torch.initial_seed() + world.rank)
        optimizer = self.optimizer = build_optimizer(model, cfg.optimizer)
        steps_per_epoch = train.n_steps(cfg.grad_accum_steps)
        schedule = LRSchedule(
            optimizer, cfg.scheduler, steps_per_epoch, cfg.epochs, self.monitor_mode
        )
        stop = cfg.early_stopping
        stopper = EarlyStopping(stop.monitor, stop.mode, stop.patience, stop.min_delta)
        trainable = [p for p in model.parameters() if p.requires_grad]
        # DDP and FSDP reduce gradients in their own buffers: the flat ones are for one process.
        flat = FlatBuffers.for_params(trainable, optimizer) if not world.active else None
        steps = self.monitor_steps = self._step_monitor(model, trainable)
        overfit = OverfitWatch(cfg.overfit_patience)
        state = self.state = LoopState(cfg.epochs, steps_per_epoch, device=self.device)
        state.epoch_start_rng = train.generator.get_state()
        # train.ema: validation, best.pt and so the finished model use the averaged weights.
        ema = WeightAverage(model, cfg.ema) if cfg.ema is not None else None
        evaluated = ema.model if ema is not None else model
        # Everything a checkpoint holds besides the weights, restored in this order (the
        # schedule after the optimizer whose learning rates it drives).
        # The flat buffers hand out (and take) the optimizer's own per-parameter state.
        parts: dict[str, Stateful] = {"optimizer": flat or optimizer, "schedule": schedule}
        parts |= {"precision": self.precision, "early_stopping": stopper, "steps": steps}
        parts |= {"overfit": overfit, "loop": state}
        if ema is not None:
            parts["ema"] = ema
        if resume is not None:
            checkpoint = load_checkpoint(resume, map_location=self.device)
            self._restore(checkpoint, model, parts)
            self._regroup(checkpoint.get("world_size", 1))
        # train.max_time counts the training time of the invocations before a resume too.
        self._clock = time.monotonic() - state.train_seconds
        deadline = self._clock + cfg.max_time if cfg.max_time is not None else None
        # train.mixup / train.cutmix: mixed images and soft targets for image classification.
        mix = BatchMixer(cfg.mixup, cfg.cutmix, objective) if cfg.mixup or cfg.cutmix else None
        forward: torch.nn.Module = replica if replica is not None else model
        no_sync: Callable[[], AbstractContextManager[Any]] | None = None
        if replica is not None:
            no_sync = replica.no_sync
        elif self.sharded:
            no_sync = partial(sharding.no_sync, model)
        take_step = partial(
            optimizer_step,
            forward=torch.compile(forward) if cfg.compile else forward,
            loss_fn=objective.loss,
            optimizer=optimizer,
            precision=self.precision,
            params=trainable,
            clip=cfg.grad_clip,
            measure=cfg.log_grad_norm or cfg.grad_clip is not None,
            flat=flat,
            replicas=world.size,
            no_sync=no_sync,
            norms=sharding.norms if self.sharded else None,
        )
        self._lr = float(optimizer.param_groups[0]["lr"])
        if world.active:
            log.info(
                "%d processes: global batch %d = batch_size %d x %d processes x "
                "grad_accum_steps %d",
                world.size,
                cfg.batch_size * world.size * cfg.grad_accum_steps,
                cfg.batch_size,
                world.size,
                cfg.grad_accum_steps,
            )

        self.callbacks.call("on_fit_start", self)
        profiler = (  # one trace, from rank 0
            StepProfiler(cfg.profile, self.profile_dir, self.device)
            if cfg.profile is not None and world.main
            else None
        )
        try:
            while not state.done:
                model.train()
                train.generator.set_state(state.epoch_start_rng)
                started, resumed_samples = time.perf_counter(), state.samples
                # Resumed mid-epoch: the same order is drawn, the steps already taken skipped.
                epoch_steps = train.steps(cfg.grad_accum_steps)
                if profiler is not None:  # it times how long each batch takes to arrive
                    epoch_steps = profiler.timed(epoch_steps)
                for micro_batches in islice(epoch_steps, state.step_in_epoch, None):
                    # Checked before the update: on the CPU a NaN never reaches the weights.
                    check = partial(steps.observe, state.global_step + 1, state.epoch + 1, self._lr)
                    if mix is not None:
                        micro_batches = [mix(*batch) for batch in micro_batches]
                    everyone = train.step_total(cfg.grad_accum_steps, state.step_in_epoch)
                    result = take_step(micro_batches, before_update=check, step_samples=everyone)
                    if ema is not None:
                        ema.update()
                    if profiler is not None and profiler.step():
                        profiler = None  # trace and summary written: the rest runs unprofiled
                    schedule.after_step()
                    state.after_step(result.loss, result.samples)
                    self._lr = float(optimizer.param_groups[0]["lr"])
                    self.callbacks.call("on_train_step_end", self)
                    every = cfg.checkpoint.every_n_steps
                    # Mid-epoch checkpoints (the epoch's end saves one anyway).
                    if every and state.global_step % every == 0 and not state.epoch_ending:
                        self._save_last(model, parts)
                    if deadline is not None and self._past(deadline):
                        break  # train.max_time is spent: the epoch ends here, validated below
                if self.device.type == "cuda":
                    torch.cuda.synchronize()  # honest timing: wait for queued kernels
                train_time = time.perf_counter() - started
                device_stats = gpu_stats(self.device)  # training's, before validation runs

                steps.flush()
                train_loss = self._finite_loss(model, state)
                epoch_samples = state.samples - resumed_samples
                if world.active:  # every rank's samples: the throughput of the whole job
                    epoch_samples = int(distributed.all_sum([epoch_samples])[0])
                row = {
                    "epoch": state.epoch + 1,
                    "step": state.global_step,
                    "train/loss": train_loss,
                    **network_epoch_metrics(model),
                    **self.validate(evaluated, val, objective),
                    "lr": self._lr,
                    "samples_per_s": epoch_samples / max(train_time, 1e-9),
                    "epoch_time_s": time.perf_counter() - started,
                    **steps.epoch_stats(state.epoch + 1),
                    "memory_mb": peak_memory_mb(self.device),
                    **device_stats,
                }
                # Ranks may draw differently within an epoch (augmentation seeds for their own
                # share): the next epoch's order comes from rank 0's generator on every rank.
                state.end_epoch(row, next_rng=distributed.broadcast(train.generator.get_state()))

                observation = (
                    overfit.update(state.epoch, train_loss, row["val/loss"])
                    if "val/loss" in row
                    else None
                )
                if observation:
                    log.warning("epoch %d: %s", state.epoch, observation)
                    state.observations.append(f"epoch {state.epoch}: {observation}")
                schedule.after_epoch(row[self.monitor])
                self._lr = float(optimizer.param_groups[0]["lr"])
                if improved(row[self.monitor], state.best_score, self.monitor_mode):
                    state.best_score, state.best_epoch = row[self.monitor], state.epoch
                    best = self._model_state(evaluated)  # FSDP: every rank gathers, 0 writes
                    if world.main:
                        save_checkpoint(self.checkpoint_dir / BEST, best)
                if stop.enabled and stopper.update(row[stop.monitor]):
                    state.should_stop = True
                if deadline is not None and self._past(deadline) and not state.done:
                    state.should_stop = True
                    state.observations.append(self._out_of_time())
                # The weights were found finite with the epoch's loss above.
                self._save_last(model, parts, checked=True)
                self.callbacks.call("on_epoch_end", self, row)
                # A callback on one rank may ask to stop: every rank stops together.
                state.should_stop = distributed.broadcast(state.should_stop)
        except BaseException as error:
            if not out_of_memory_error(error):
                self.callbacks.call("on_exception", self, error)
                raise
            # A diagnosis instead of an allocator trace: where, at what peak, what to change.
            where = f"epoch {state.epoch + 1}, step {state.global_step + 1}"
            diagnosis = out_of_memory(error, self.device, where, cfg.model_dump())
            self.callbacks.call("on_exception", self, diagnosis)
            raise diagnosis from error
        finally:
            if flat is not None:
                flat.release()
            if profiler is not None:
                profiler.close()
        return self._finish(model, evaluated)

    # --- the TrainingState callbacks read -------------------------------------------------------

    @property
    def epochs(self) -> int:
        return self.state.epochs

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def global_step(self) -> int:
        return self.state.global_step

    @property
    def steps_per_epoch(self) -> int:
        return self.state.steps_per_epoch

    @property
    def step_in_epoch(self) -> int:
        return self.state.step_in_epoch

    @property
    def samples_in_epoch(self) -> int:
        """Training samples seen so far in the current epoch."""
        return self.state.samples

    @property
    def history(self) -> list[dict[str, float]]:
        return self.state.history

    @property
    def best_score(self) -> float | None:
        return self.state.best_score

    @property
    def best_epoch(self) -> int | None:
        return self.state.best_epoch

    @property
    def should_stop(self) -> bool:
        return self.state.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self.state.should_stop = value

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group right now (nan before fit)."""
        return self._lr

    @property
    def step_rows(self) -> list[tuple[float, ...]]:
        """One row per optimizer step so far: step, epoch, lr, loss, gradient norm."""
        return self.monitor_steps.rows if self.monitor_steps else []

    @property
    def layer_names(self) -> list[str]:
        """The layers whose gradient norms are sampled (see :class:`StepMonitor`)."""
        monitor = self.monitor_steps
        return monitor.layers if monitor is not None and monitor.layer_every else []

    @property
    def layer_rows(self) -> list[tuple[float, ...]]:
        """The sampled steps' (step, norm of each of :attr:`layer_names`), in step order."""
        monitor = self.monitor_steps
        return monitor.layer_samples() if monitor is not None and monitor.layer_every else []

    def running_loss(self) -> float:
        """Mean training loss of the epoch so far (synchronises with the device)."""
        return self.state.mean_loss() if self.state.samples else float("nan")

    # --- evaluation ---------------------------------------------------------------------------

    def validate(
        self, model: torch.nn.Module, batches: TensorBatches, objective: Objective
    ) -> dict[str, float]:
        """Loss and metrics on ``batches``, predictions gathered batch by batch on the CPU.

        With several processes each predicts its share and the metrics are computed over the
        whole split, gathered, on every rank (they decide early stopping and the best epoch).
        """
        raw, loss = predict_raw(
            model, batches, self.precision.autocast, objective, getattr(objective, "compact", None)
        )
        if self.world.active:
            raw = distributed.gather_rows(raw, self.world)
            positions = [np.arange(lo, hi) for lo, hi in batches.step_plan(1)]
            order = distributed.gather_rows(np.concatenate([np.zeros(0, np.int64), *positions]))
            raw = raw[np.argsort(order, kind="stable")]
            loss = distributed.all_sum([loss], self.world)[0]  # each a share of the total
        decoded = objective.decode(raw)
        metrics = objective.metrics(objective.truth(batches.target.cpu().numpy()), decoded)
        if not getattr(objective, "validation_loss", True):  # a detector's outputs give none
            return {f"val/{k}": v for k, v in metrics.items()}
        return {"val/loss": loss, **{f"val/{k}": v for k, v in metrics.items()}}

    # --- checkpoints --------------------------------------------------------------------------

    def _step_monitor(
        self, model: torch.nn.Module, trainable: list[torch.nn.Parameter]
    ) -> StepMonitor:
        return StepMonitor(
            [n for n, p in model.named_parameters() if p.requires_grad],
            self.device,
            scaled=getattr(self.precision, "scaler", None) is not None,
            precision=self.config.precision,
            checkpoint=self.checkpoint_dir / LAST,
            params=trainable,
            # FSDP's gradients are shards: a layer's norm would be one rank's part of it.
            layer_every=0 if self.sharded else self.config.layer_grad_norm_every,
        )

    def _model_state(self, model: torch.nn.Module) -> dict[str, Any]:
        """The weights (whole, on rank 0: every rank calls it under FSDP) and what they are."""
        return {
            "model": sharding.full_model_state(model) if self.sharded else model.state_dict(),
            "epoch": self.state.epoch,
            "global_step": self.state.global_step,
            "world_size": self.world.size,
            "metrics": self.state.history[-1] if self.state.history else {},
            **self.metadata,
        }

    def _save_last(
        self, model: torch.nn.Module, parts: dict[str, Stateful], *, checked: bool = False
    ) -> None:
        """last.pt: everything needed to continue exactly from here, even mid-epoch.

        ``checked``: the loss and weights were just found finite (at an epoch's end).
        """
        if not checked:
            self._finite_loss(model, self.state)  # never checkpoint a diverged run
        self.state.train_seconds = time.monotonic() - self._clock
        # Each rank draws its own dropout masks: every rank's RNG goes in the checkpoint.
        by_rank = distributed.gather_objects(rng_states(), self.world)
        state = self._model_state(model)
        shards = None
        if self.sharded:  # every rank writes its own shard of the weights and optimizer
            assert self.optimizer is not None
            step = self.state.global_step
            shards = sharding.save_sharded(self.checkpoint_dir, model, self.optimizer, step)
        if not self.world.main:
            return  # rank 0 writes; every rank holds the same weights and loop state
        # Under FSDP the optimizer state is in the shards (see sharding.save_sharded).
        kept = {n: part for n, part in parts.items() if shards is None or n != "optimizer"}
        state.update({name: part.state_dict() for name, part in kept.items()})
        state["rng"] = by_rank[0]
        if self.world.active:
            state["rng_by_rank"] = by_rank
            state["strategy"] = self.config.distributed.strategy
        if shards is not None:
            state["sharded"] = shards
        save_checkpoint(self.checkpoint_dir / LAST, state)
        if shards is not None:  # last.pt now names the new shards: the old ones can go
            sharding.prune_sharded(self.checkpoint_dir, keep=shards)

    def _restore(
        self, checkpoint: dict[str, Any], model: torch.nn.Module, parts: dict[str, Stateful]
    ) -> None:
        """Undo :meth:`_save_last`: weights, every part's state and every RNG."""
        if "sharded" in checkpoint:
            # Written under FSDP: weights and optimizer from the shards, for this world.
            assert self.optimizer is not None
            sharding.load_sharded(self.checkpoint_dir, checkpoint["sharded"], model, self.optimizer)
            parts = {name: part for name, part in parts.items() if name != "optimizer"}
        elif self.sharded:
            raise RunError(
                f"{self.checkpoint_dir / LAST} was written with train.distributed.strategy="
                f"{checkpoint.get('strategy', 'ddp')} (or one process): resume it with that "
                "strategy; its optimizer state is not sharded"
            )
        else:
            model.load_state_dict(checkpoint["model"])
        for name, part in parts.items():
            part.load_state_dict(checkpoint[name])
        by_rank = checkpoint.get("rng_by_rank") or [checkpoint["rng"]]
        # The same world: each rank continues its own streams (an exact resume).
        same = len(by_rank) == self.world.size
        restore_rng_states(by_rank[self.world.rank] if same else checkpoint["rng"])

    def _regroup(self, saved: int) -> None:
        """Resuming on a different number of processes than the checkpoint was written by.

        The epoch's steps were shares of a different global batch, so an epoch in progress
        restarts from its first step (same order); the weights, optimizer and schedule go on.
        """
        if saved == self.world.size:
            return
        state = self.state
        note = (
            f"resumed on {self.world.size} process(es) from a checkpoint written by {saved} "
            f"at step {state.global_step}"
        )
        if state.step_in_epoch:
            note += f"; epoch {state.epoch + 1} restarted from its first step"
            state.step_in_epoch, state.samples = 0, 0
            state.loss_sum.zero_()
        log.warning("%s", note)
        state.observations.append(note)

    def _finite_loss(self, model: torch.nn.Module, state: LoopState) -> float:
        """The epoch's mean loss so far; raises before non-finite weights are checkpointed."""
        loss = state.mean_loss()
        # Under FSDP each rank checks its own shard of the weights.
        params: list[torch.Tensor] = list(model.parameters())
        finite = all_finite(sharding.local_tensors(params) if self.sharded else params)
        if self.world.active:  # the mean over every rank's samples, every rank's weights
            loss_sum, samples, bad = distributed.all_sum(
                [loss * state.samples, state.samples, float(not finite)]
            )
            loss, finite = loss_sum / max(samples, 1), bad == 0
        if math.isfinite(loss) and finite:
            return loss
        what = f"loss became {loss}" if not math.isfinite(loss) else "weights became non-finite"
        raise NonFiniteLossError(
            f"training {what} in epoch {state.epoch + 1} (lr {self._lr:.3g}). "
            f"{at_stake(self.checkpoint_dir / LAST)}Likely fixes: lower train.optimizer.lr, set "
            f"train.grad_clip, {precision_advice(self.config.precision)}or check the inputs for "
            "extreme values"
        )

    def _past(self, deadline: float) -> bool:
        """Whether train.max_time is spent (rank 0's clock decides for every rank)."""
        return distributed.broadcast(time.monotonic() > deadline, self.world)

    def _out_of_time(self) -> str:
        """The observation for a run that train.max_time stopped."""
        state, budget = self.state, self.config.max_time or 0.0
        spent = format_duration(time.monotonic() - self._clock)
        kept = f"epoch {state.best_epoch}" if state.best_epoch else "the last weights"
        return (
            f"stopped after {spent} (epoch {state.epoch}, step {state.global_step}): the time "
            f"budget train.max_time={format_duration(budget)} was spent; the model is the best "
            f"checkpoint so far ({kept})"
        )

    def _finish(self, model: torch.nn.Module, evaluated: torch.nn.Module) -> FitResult:
        """Load the best weights into ``model`` and say how training went.

        ``evaluated``: the network validation ran on (the moving average with train.ema).
        """
        best_path = self.checkpoint_dir / BEST
        # The monitored metric was never finite: keep the last weights as the best.
        if distributed.broadcast(self.world.main and not best_path.exists(), self.world):
            last = self._model_state(evaluated)  # FSDP: every rank gathers, rank 0 writes
            if self.world.main:
                save_checkpoint(best_path, last)
        # Rank 0 evaluates and writes what follows; the others are done. A sharded model is
        # left as it is: its owner rebuilds a whole one from best.pt.
        if self.world.main and not self.sharded:
            model.load_state_dict(load_checkpoint(best_path, map_location=self.device)["model"])
        state = self.state
        flow = gradient_flow(self.layer_names, self.layer_rows)
        if flow is not None:
            log.warning("%s", flow)
            state.observations.append(flow)
        self.callbacks.call("on_fit_end", self)
        return FitResult(
            state.history,
            state.best_epoch,
            state.best_score,
            state.epoch < self.config.epochs,
            best_path,
            observations=list(state.observations),
            sharded=self.sharded,
        )

    def _check_monitors(self, objective: Objective) -> None:
        val_loss = ["val/loss"] if getattr(objective, "validation_loss", True) else []
        known = ["train/loss", *val_loss, *(f"val/{m}" for m in objective.metric_names)]
        for key, name in (
            ("train.checkpoint.monitor", self.config.checkpoint.monitor),
            ("train.early_stopping.monitor", self.config.early_stopping.monitor),
        ):
            if name not in known:
                raise ConfigError(
                    f"{key}: unknown metric '{name}'{did_you_mean(name, known)}; "
                    f"available: {', '.join(known)}"
                )


def network_epoch_metrics(model: torch.nn.Module) -> dict[str, float]:
    """What the network itself measured over the epoch's training steps, e.g. a detector's
    loss components (its ``epoch_metrics()``, which also starts the next epoch's count)."""
    network = getattr(model, "module", model)  # under DDP
    network = getattr(network, "_orig_mod", network)  # under torch.compile
    report = getattr(network, "epoch_metrics", None)
    return dict(report()) if callable(report) else {}


class Stateful(Protocol):
    """Anything a checkpoint saves and a resume restores."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def predict_raw(
    model: torch.nn.Module,
    batches: TensorBatches,
    autocast: Callable[[], AbstractContextManager[Any]] | None = None,
    objective: Objective | None = None,
    keep: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[np.ndarray, float]:
    """Raw outputs for every row of ``batches`` as a float32 array, and the mean loss if asked.

    Inputs move to the model's device and outputs back to the CPU batch by batch, so a large
    evaluation set never has to fit on the device at once. ``keep``: what to keep of each
    batch's outputs instead (a segmentation keeps each pixel's class, not its logits).
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
            if objective is not None and len(target):  # a rank's share may be empty
                loss_sum += objective.loss(output, target).double().cpu() * len(target)
            chunks.append((keep(output) if keep else output.float()).cpu().numpy())
    raw = np.concatenate(chunks) if chunks else np.zeros((0, 1), dtype=np.float32)
    return raw, float(loss_sum) / max(len(batches), 1)  # len() counts samples
