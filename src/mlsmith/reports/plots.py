"""Training plots as PNG bytes: learning curves, validation metrics, LR, gradient norms, speed.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas directly:
no pyplot, so no global figure registry, no display and nothing to close; a report can be
written from any thread or a headless server. Every function returns ``None`` when its data
was not recorded, and the caller says so in words. Test-split plots live in
:mod:`mlsmith.reports.evaluation_plots`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

WIDTH, HEIGHT, DPI = 6.4, 4.0, 100
# Wider than this (max / min) and a positive series reads better on a log axis.
LOG_RATIO = 20.0
# Keys typed Any: matplotlib types rc_context with a Literal of every rcParams key.
_STYLE: dict[Any, Any] = {
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.framealpha": 0.85,
    "font.size": 9.5,
}


@dataclass(frozen=True)
class Series:
    """One line of a curves plot: x and y values with a legend label and an optional style."""

    label: str
    x: Sequence[float] | np.ndarray
    y: Sequence[float] | np.ndarray
    color: str | None = None
    linestyle: str = "-"


@contextmanager
def figure(
    width: float = WIDTH,
    height: float = HEIGHT,
    layout: Literal["constrained", "tight"] | None = "constrained",
) -> Iterator[Figure]:
    """A Figure with the report style applied while it is drawn.

    ``layout=None`` skips the constrained-layout solver (most of the drawing time of a figure
    with many panels); the caller then places the panels with ``subplots_adjust``.
    """
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    with rc_context(_STYLE):
        yield Figure(figsize=(width, height), dpi=DPI, layout=layout)


def to_png(fig: Figure) -> bytes:
    """Render ``fig`` with the Agg canvas (no pyplot, no display) into a 256-colour PNG.

    Plots use a few flat colours plus anti-aliasing, so a palette is visually lossless and makes
    the PNG about 3x smaller than matplotlib's RGBA output; the report stays a few hundred KB.
    Pillow is already there: matplotlib depends on it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba())
    palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    return buffer.getvalue()


def curves(
    series: list[Series],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    best_epoch: int | None = None,
    log_y: bool | None = None,
    markers: bool = True,
) -> bytes | None:
    """Lines on one axis (learning curves, one run or several); None when no series has data."""
    drawn = [s for s in series if _finite(s.y).any()]
    if not drawn:
        return None
    with figure() as fig:
        ax = fig.add_subplot()
        for s in drawn:
            ax.plot(
                s.x,
                s.y,
                label=s.label,
                color=s.color,
                linestyle=s.linestyle,
                marker="o" if markers and len(s.x) <= 40 else None,
                markersize=3.5,
                linewidth=1.6,
            )
        if best_epoch is not None:
            ax.axvline(best_epoch, color="0.4", linestyle=":", label=f"best epoch ({best_epoch})")
        _axes(ax, title=title, xlabel=xlabel, ylabel=ylabel)
        if (
            log_y
            if log_y is not None
            else _wants_log(np.concatenate([_finite_values(s.y) for s in drawn]))
        ):
            ax.set_yscale("log")
        if xlabel in ("epoch", "optimizer step"):
            _integer_x(ax)
        legend(ax, loc="best")
        return to_png(fig)


def loss_curves(history: pd.DataFrame | None, best_epoch: int | None) -> bytes | None:
    """train/loss and val/loss per epoch, with the best epoch marked."""
    if history is None or "epoch" not in history:
        return None
    epochs = history["epoch"].to_numpy()
    series = [
        Series(name, epochs, history[name].to_numpy(dtype=float), color, style)
        for name, color, style in (("train/loss", "C0", "--"), ("val/loss", "C1", "-"))
        if name in history
    ]
    return curves(
        series,
        title="Learning curves",
        xlabel="epoch",
        ylabel="loss (mean per sample)",
        best_epoch=best_epoch,
        log_y=False,
    )


def metric_grid(
    history: pd.DataFrame | None, columns: list[str], best_epoch: int | None
) -> bytes | None:
    """One small panel per validation metric, three across; None without any."""
    if history is None or "epoch" not in history or not columns:
        return None
    per_row = min(3, len(columns))
    rows = math.ceil(len(columns) / per_row)
    height = 2.3 * rows + 0.5
    with figure(3.2 * per_row, height, layout=None) as fig:
        fig.suptitle("Validation metrics per epoch", fontsize=11, fontweight="bold")
        axes = fig.subplots(rows, per_row, squeeze=False)
        # Fixed margins in inches, converted to figure fractions, fit any number of rows.
        fig.subplots_adjust(
            left=0.65 / (3.2 * per_row),
            right=1 - 0.15 / (3.2 * per_row),
            top=1 - 0.8 / height,
            bottom=0.5 / height,
            hspace=0.75,
            wspace=0.35,
        )
        epochs = history["epoch"].to_numpy()
        for i, ax in enumerate(axes.flat):
            if i >= len(columns):
                ax.set_visible(False)
                continue
            name = columns[i]
            ax.plot(
                epochs, history[name].to_numpy(dtype=float), marker="o", markersize=3, color="C1"
            )
            if best_epoch is not None:
                ax.axvline(best_epoch, color="0.4", linestyle=":")
            ax.set_title(name, fontsize=9.5)
            ax.set_xlabel("epoch", fontsize=8.5)
            ax.tick_params(labelsize=8)
            _integer_x(ax)
        return to_png(fig)


def lr_schedule(steps: pd.DataFrame | None, history: pd.DataFrame | None) -> bytes | None:
    """The learning rate per optimizer step (steps.csv), else per epoch (history.csv)."""
    if steps is not None and {"step", "lr"} <= set(steps.columns):
        x, y, xlabel = steps["step"].to_numpy(), steps["lr"].to_numpy(dtype=float), "optimizer step"
    elif history is not None and {"epoch", "lr"} <= set(history.columns):
        x, y, xlabel = history["epoch"].to_numpy(), history["lr"].to_numpy(dtype=float), "epoch"
    else:
        return None
    return curves(
        [Series("learning rate", x, y, "C2")],
        title="Learning-rate schedule",
        xlabel=xlabel,
        ylabel="learning rate",
        markers=xlabel == "epoch",
    )


def grad_norms(
    steps: pd.DataFrame | None, history: pd.DataFrame | None, clip: float | None
) -> bytes | None:
    """Gradient L2 norm before clipping: per step with a moving average, else per epoch."""
    series: list[Series] = []
    if steps is not None and {"step", "grad_norm"} <= set(steps.columns):
        x, y = steps["step"].to_numpy(), steps["grad_norm"].to_numpy(dtype=float)
        window = max(1, len(y) // 50)
        series = [Series("per step", x, y, "C0")]
        if window > 1:
            # Skips NaN steps (a non-finite gradient) instead of letting one poison the window.
            smooth = steps["grad_norm"].rolling(window, min_periods=1).mean().to_numpy(dtype=float)
            series.append(Series(f"moving mean ({window} steps)", x, smooth, "C3"))
        xlabel = "optimizer step"
    elif history is not None and {"epoch", "grad_norm"} <= set(history.columns):
        x = history["epoch"].to_numpy()
        series = [
            Series("mean over the epoch", x, history["grad_norm"].to_numpy(dtype=float), "C0")
        ]
        if "grad_norm_max" in history:
            y = history["grad_norm_max"].to_numpy(dtype=float)
            series.append(Series("max over the epoch", x, y, "C3", "--"))
        xlabel = "epoch"
    else:
        return None
    if not any(_finite(s.y).any() for s in series):
        return None
    values = np.concatenate([_finite_values(s.y) for s in series])
    with figure() as fig:
        ax = fig.add_subplot()
        for s in series:
            many = len(s.x) > 40
            ax.plot(
                s.x,
                s.y,
                label=s.label,
                color=s.color,
                linestyle=s.linestyle,
                linewidth=0.8 if many and s.label == "per step" else 1.6,
                alpha=0.5 if many and s.label == "per step" else 1.0,
                marker=None if many else "o",
                markersize=3.5,
            )
        if clip is not None:
            ax.axhline(clip, color="0.3", linestyle=":", label=f"clip threshold ({clip:g})")
            values = np.append(values, clip)
        _axes(ax, title="Gradient norm (before clipping)", xlabel=xlabel, ylabel="gradient L2 norm")
        if _wants_log(values):
            ax.set_yscale("log")
        _integer_x(ax)
        legend(ax, loc="best")
        return to_png(fig)


def layer_grad_norms(steps: pd.DataFrame | None) -> bytes | None:
    """Each layer's gradient norm on the sampled steps (steps.csv's ``grad_norm/<layer>``
    columns), on a log scale: a layer far below the others is one whose gradients vanish."""
    from mlsmith.training.diagnostics import LAYER_PREFIX

    if steps is None:
        return None
    columns = [c for c in steps.columns if c.startswith(LAYER_PREFIX)]
    sampled = steps.dropna(subset=columns, how="all") if columns else steps.iloc[:0]
    if sampled.empty:
        return None
    x = sampled["step"].to_numpy()
    with figure() as fig:
        ax = fig.add_subplot()
        # Beyond ten layers a legend is unreadable: colour runs from the input (dark) up.
        many = len(columns) > 10
        colors = plt_colors(len(columns)) if many else [f"C{i % 10}" for i in range(len(columns))]
        for column, color in zip(columns, colors, strict=True):
            y = sampled[column].to_numpy(dtype=float)
            ax.plot(
                x,
                y,
                color=color,
                linewidth=1.2,
                marker=None if len(x) > 40 else "o",
                markersize=3,
                label=None if many else column.removeprefix(LAYER_PREFIX),
            )
        _axes(
            ax, title="Gradient norm per layer", xlabel="optimizer step", ylabel="gradient L2 norm"
        )
        values = _finite_values(sampled[columns].to_numpy(dtype=float).ravel())
        if len(values) and values.min() > 0:
            ax.set_yscale("log")
        _integer_x(ax)
        legend(ax, loc="best", fontsize="small", ncols=2)
        if many:
            ax.text(
                0.01,
                0.01,
                f"{len(columns)} layers, darker = nearer the input",
                transform=ax.transAxes,
                fontsize="small",
                color="0.3",
            )
        return to_png(fig)


def plt_colors(n: int) -> list[Any]:
    """``n`` colours from dark to light (viridis), one per layer in order."""
    from matplotlib import colormaps

    return [colormaps["viridis"](i / max(n - 1, 1)) for i in range(n)]


def throughput(history: pd.DataFrame | None) -> bytes | None:
    """Training samples per second, one bar per epoch, with the mean."""
    if history is None or not {"epoch", "samples_per_s"} <= set(history.columns):
        return None
    speed = history["samples_per_s"].to_numpy(dtype=float)
    if not _finite(speed).any():
        return None
    epochs = history["epoch"].to_numpy()
    with figure() as fig:
        ax = fig.add_subplot()
        ax.bar(epochs, speed, color="C0", alpha=0.8, label="samples/s")
        mean = float(np.nanmean(speed))
        ax.axhline(mean, color="C3", linestyle="--", label=f"mean ({mean:,.0f} samples/s)")
        _axes(ax, title="Training throughput", xlabel="epoch", ylabel="samples/s")
        _integer_x(ax)
        # Headroom above the bars keeps the legend off them.
        ax.set_ylim(0, 1.3 * float(np.nanmax(speed)))
        ax.legend(loc="upper right", ncols=2)
        return to_png(fig)


# --- helpers ----------------------------------------------------------------------------------


def legend(ax: Axes, **options: Any) -> None:
    """Draw the legend when something has a label (matplotlib warns otherwise)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**options)


def _axes(ax: Axes, *, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _integer_x(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _finite(values: Any) -> np.ndarray:
    return np.isfinite(np.asarray(values, dtype=float))


def _finite_values(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]


def _wants_log(values: np.ndarray) -> bool:
    return (
        bool(len(values)) and bool((values > 0).all()) and values.max() / values.min() > LOG_RATIO
    )
