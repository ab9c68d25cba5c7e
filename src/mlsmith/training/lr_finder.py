"""The learning-rate range test (Smith, "Cyclical Learning Rates", 2017; fastai's ``lr_find``).

Train from the config's initial weights while the learning rate grows exponentially from
``min_lr`` to ``max_lr``, one step per value, recording the loss; stop once the loss explodes.
The suggestion is the LR where the smoothed loss falls fastest (steepest negative slope against
log LR), before its minimum: large enough to learn quickly, well below where training diverges.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.config import Config
from mlsmith.errors import ConfigError
from mlsmith.files import write_bytes, write_text

if TYPE_CHECKING:
    import torch

    from mlsmith.data.base import PreparedData
    from mlsmith.data.batches import Batch, TensorBatches

log = logging.getLogger(__name__)

# Exponential moving average of the loss, as fastai, to tell when the loss has diverged: the raw
# per-batch loss is too noisy for that.
SMOOTHING = 0.98
# Stop when the smoothed loss exceeds this multiple of the best seen: it has diverged.
DIVERGENCE = 4.0


@dataclass
class LRFindResult:
    """Learning rates tried, the losses they gave, and what to use."""

    lrs: list[float]
    losses: list[float]  # raw per-step training loss
    smoothed: list[float]  # centred moving average of ``losses`` (up to divergence)
    suggested_lr: float | None
    min_loss_lr: float | None
    diverged: bool
    plot: Path
    table: Path
    seconds: float


def check_range(min_lr: float, max_lr: float, steps: int) -> None:
    """Refuse a range test that cannot work, before any data is read."""
    if not 0 < min_lr < max_lr:
        raise ConfigError(f"lr-find: need 0 < min_lr < max_lr, got {min_lr} and {max_lr}")
    if steps < 10:
        raise ConfigError(f"lr-find: --steps must be at least 10, got {steps}")


def find_lr(
    config: Config,
    data: PreparedData,
    network: torch.nn.Module,
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    steps: int = 100,
    output: str | Path | None = None,
) -> LRFindResult:
    """Run the range test on ``network`` (untrained, as the pipeline builds it) and ``data``;
    writes ``lr_find.png`` and ``.csv``.

    ``output`` is the folder for those files (default ``<output_dir>/<experiment>/lr-find-<time>``).
    """
    from mlsmith.training.device import resolve_device
    from mlsmith.training.optimizers import build_optimizer
    from mlsmith.training.precision import build_precision
    from mlsmith.training.step import optimizer_step

    check_range(min_lr, max_lr, steps)
    cfg = config.train
    device = resolve_device(cfg.device)
    precision = build_precision(cfg.precision, device)
    network = network.to(device)
    network.train()
    # The range test sets every step's rate itself (lr may be "auto" in the config).
    optimizer = build_optimizer(network, cfg.optimizer.model_copy(update={"lr": min_lr}))
    from mlsmith.data.batches import BatchOptions, split_batches

    batches = split_batches(
        data.preprocessor,
        data.train,
        BatchOptions(
            cfg.batch_size,
            shuffle=True,
            seed=config.seed,
            drop_last=len(data.train) > cfg.batch_size,
            train=True,
        ),
    )
    batches.to(device)
    factor = (max_lr / min_lr) ** (1 / (steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best = 0.0, math.inf
    diverged = False
    started = time.perf_counter()
    stream = _cycle(batches)
    for i in range(steps):
        lr = min_lr * factor**i
        for group in optimizer.param_groups:
            group["lr"] = lr
        result = optimizer_step(
            [next(stream)],
            forward=network,
            loss_fn=data.task.loss,
            optimizer=optimizer,
            precision=precision,
        )
        value = float(result.loss.float().item())
        lrs.append(lr)
        losses.append(value)
        if not math.isfinite(value):
            diverged = True
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        smooth = average / (1 - SMOOTHING ** (i + 1))  # bias correction for the first steps
        smoothed.append(smooth)
        best = min(best, smooth)
        if i > 10 and smooth > DIVERGENCE * best:
            diverged = True
            break
    seconds = time.perf_counter() - started
    # The running average lags (it only sees the past); with every loss in hand, a centred
    # average places the fall where it happened.
    smoothed = centred_average(losses[: len(smoothed)], window=max(5, steps // 12))
    suggested, at_min = suggest(lrs[: len(smoothed)], smoothed)

    folder = Path(output) if output else _default_folder(config)
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "lr_find.csv"
    rows = ["lr,loss,smoothed_loss"] + [
        f"{lr:.6g},{raw:.6g},{smoothed[j] if j < len(smoothed) else math.nan:.6g}"
        for j, (lr, raw) in enumerate(zip(lrs, losses, strict=True))
    ]
    write_text(table, "\n".join(rows) + "\n")
    plot = folder / "lr_find.png"
    write_bytes(plot, _plot(lrs[: len(smoothed)], losses, smoothed, suggested, config))
    return LRFindResult(lrs, losses, smoothed, suggested, at_min, diverged, plot, table, seconds)


# When the range test finds no clear fall (a loss flat from the start), the rate used instead.
FALLBACK_LR = 1e-3


def choose_lr(
    config: Config, data: PreparedData, network: torch.nn.Module, output: Path
) -> tuple[float, dict[str, Any]]:
    """``train.optimizer.lr: auto``: the range test's suggestion for ``network``, and what
    run.json records about it.

    The test trains a copy, and every RNG is restored afterwards, so the run itself starts from
    the same weights and draws the same batches as with a fixed rate. ``lr_find.csv`` and
    ``.png`` go to ``output``.
    """
    import copy

    from mlsmith.training.reproducibility import restore_rng_states, rng_states

    states = rng_states()
    try:
        result = find_lr(config, data, copy.deepcopy(network), output=output)
    finally:
        restore_rng_states(states)
    lr, rule = result.suggested_lr, "steepest fall of the smoothed loss"
    if lr is None or not math.isfinite(lr):
        lr, rule = FALLBACK_LR, f"no clear fall in the loss: the fallback {FALLBACK_LR:g}"
    record = {
        "lr": lr,
        "rule": rule,
        "min_loss_lr": result.min_loss_lr,
        "steps": len(result.lrs),
        "diverged": result.diverged,
        "seconds": round(result.seconds, 3),
    }
    log.info(
        "lr auto: %.3g (%s; range test of %d steps, %.1f s)",
        lr,
        rule,
        len(result.lrs),
        result.seconds,
    )
    return lr, record


def centred_average(values: list[float], window: int) -> list[float]:
    """Moving average over ``window`` points centred on each one (shrinking at the ends)."""
    half = window // 2
    array = np.asarray(values, dtype=np.float64)
    sums = np.concatenate([[0.0], np.cumsum(array)])
    out = []
    for i in range(len(array)):
        low, high = max(0, i - half), min(len(array), i + half + 1)
        out.append(float((sums[high] - sums[low]) / (high - low)))
    return out


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float | None, float | None]:
    """(LR of the steepest descent before the minimum, LR of the minimum) of the smoothed loss."""
    if len(smoothed) < 5:
        return None, None
    losses = np.asarray(smoothed)
    logs = np.log10(np.asarray(lrs))
    lowest = int(np.argmin(losses))
    # Skip the first few points: the moving average is still settling there.
    start = min(3, lowest)
    if lowest - start < 2:
        return float(lrs[lowest]) / 10, float(lrs[lowest])
    slopes = np.gradient(losses[start : lowest + 1], logs[start : lowest + 1])
    steepest = start + int(np.argmin(slopes))
    return float(lrs[steepest]), float(lrs[lowest])


def _cycle(batches: TensorBatches) -> Iterator[Batch]:
    """Batches forever: a short range test may need more steps than one epoch has."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ConfigError("lr-find: the training split gives no batches")


def _default_folder(config: Config) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(config.output_dir) / config.experiment / f"lr-find-{stamp}"


def _plot(
    lrs: list[float],
    losses: list[float],
    smoothed: list[float],
    suggested: float | None,
    config: Config,
) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(lrs, losses[: len(lrs)], color="0.75", linewidth=1, label="loss per step")
    axes.plot(lrs, smoothed, color="C0", linewidth=2, label="smoothed loss")
    if suggested is not None:
        axes.axvline(suggested, color="C3", linestyle="--", label=f"suggested lr {suggested:.2g}")
    axes.set_xscale("log")
    axes.set_xlabel("learning rate (log scale)")
    axes.set_ylabel("training loss")
    if smoothed:
        # Show the fall in full; the explosion at the end would squash it flat.
        low, start = min(smoothed), max(smoothed[: max(len(smoothed) // 10, 1)])
        axes.set_ylim(low - 0.1 * abs(low), max(start, low) * 1.5 + 1e-12)
    axes.set_title(f"LR range test: {config.experiment} ({config.model.type})")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
