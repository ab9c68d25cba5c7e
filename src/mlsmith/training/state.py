"""Where the training loop is: the one object that says how far it has got.

The loop reads and advances a :class:`LoopState`; a checkpoint saves its ``state_dict`` and a
resume loads it, so continuing mid-epoch needs nothing threaded through the loop: the epoch's
batch order is redrawn from ``epoch_start_rng`` and the first ``step_in_epoch`` steps skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LoopState:
    """Epoch and step counters, the running sums of the epoch in progress, the best score."""

    epochs: int  # planned
    steps_per_epoch: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    epoch: int = 0  # completed epochs
    global_step: int = 0  # optimizer steps taken
    step_in_epoch: int = 0  # optimizer steps taken in the epoch in progress
    samples: int = 0  # training samples seen in the epoch in progress
    # Sum of loss x samples over the epoch in progress, kept on the device: adding to it never
    # waits for the GPU; it is read once an epoch (and by a live progress bar).
    loss_sum: torch.Tensor = field(init=False)
    # The batch generator's state when the epoch in progress began: its order is redrawn from it.
    epoch_start_rng: torch.Tensor | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    best_score: float | None = None
    best_epoch: int | None = None
    should_stop: bool = False
    # Seconds of training up to the last checkpoint, over every invocation (train.max_time).
    train_seconds: float = 0.0
    # Things a person should know about this run (overfitting...), for the report.
    observations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)

    @property
    def done(self) -> bool:
        """Whether the loop should end: every epoch ran, or something asked it to stop."""
        return self.epoch >= self.epochs or self.should_stop

    @property
    def epoch_ending(self) -> bool:
        """Whether the epoch's last step has been taken."""
        return self.step_in_epoch >= self.steps_per_epoch

    def after_step(self, loss: torch.Tensor, samples: int) -> None:
        """Count one optimizer step of ``samples`` samples whose mean loss is ``loss``."""
        self.loss_sum.add_(loss, alpha=samples)
        self.samples += samples
        self.global_step += 1
        self.step_in_epoch += 1

    def mean_loss(self) -> float:
        """The epoch's mean training loss so far (reads the device: once an epoch)."""
        return float(self.loss_sum.item()) / max(self.samples, 1)

    def end_epoch(self, row: dict[str, float], next_rng: torch.Tensor) -> None:
        """Record a finished epoch's history row and start counting the next one."""
        self.history.append(row)
        self.epoch += 1
        self.step_in_epoch = 0
        self.samples = 0
        self.loss_sum.zero_()
        self.epoch_start_rng = next_rng

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "history": self.history,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "should_stop": self.should_stop,
            "train_seconds": self.train_seconds,
            "observations": self.observations,
            "loss_sum": float(self.loss_sum.item()),
            "samples": self.samples,
            "epoch_start_rng": self.epoch_start_rng,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        self.global_step = state["global_step"]
        self.history = list(state["history"])
        self.best_score = state["best_score"]
        self.best_epoch = state["best_epoch"]
        self.should_stop = state["should_stop"]
        self.train_seconds = state.get("train_seconds", 0.0)  # absent before train.max_time
        self.observations = list(state.get("observations", []))
        self.loss_sum.fill_(state["loss_sum"])
        self.samples = state["samples"]
        self.epoch_start_rng = state["epoch_start_rng"]
