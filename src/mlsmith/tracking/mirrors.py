"""Trackers beside MLflow (``track.backends``): TensorBoard event files and Weights & Biases.

A mirror gets what the MLflow run gets: the params at the start, the per-epoch metrics, the
per-step learning rate, loss and gradient norms (the sampled per-layer ones too), the final
metrics, the report's figures, and the end. Like the MLflow tracker, a mirror is a passenger: a
failure warns once, switches that mirror off, and training goes on.

- TensorBoard: files in ``<run>/tensorboard/`` (``tensorboard --logdir runs/``): scalars by
  epoch and by step, the config as text, the report's figures as images, and the params with
  the final test metrics in its HParams tab.
- Weights & Biases: one W&B run per mlsmith run, its id derived from the run directory so a
  resumed run continues it. ``track.wandb_mode``: online uploads (needs ``WANDB_API_KEY`` or
  ``wandb login``); offline writes ``<run>/wandb/offline-run-*`` for ``wandb sync``; auto picks
  online when ``WANDB_API_KEY`` is set. Per-epoch metrics are plotted against ``epoch`` and
  per-step ones against ``global_step``.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Protocol

from mlsmith.errors import MissingExtraError

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
# wandb writes its run files in <dir>/wandb/.
WANDB_DIR = "wandb"
# How long wandb may take to start before the run goes on without it (its default is 90 s).
WANDB_INIT_TIMEOUT_S = 30.0

Figure = tuple[str, bytes]  # (title, PNG)


class Mirror(Protocol):
    """A tracker beside MLflow."""

    name: str

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Per-epoch (or final) metrics at epoch ``step``."""

    def log_step_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Per-optimizer-step values at global step ``step``."""

    def log_figures(self, figures: list[Figure]) -> None:
        """The report's figures, once, at the end."""

    def finish(self, status: str) -> None:
        """Close: FINISHED, FAILED or KILLED."""


def open_mirrors(
    backends: list[str],
    *,
    run_dir: Path,
    params: dict[str, Any],
    config_yaml: str,
    project: str,
    run_name: str,
    wandb_mode: str = "auto",
    wandb_entity: str | None = None,
) -> list[Mirror]:
    """The mirrors ``backends`` names, opened in ``run_dir``.

    A missing extra is a MissingExtraError (before any training); any other failure to open
    one warns and leaves it out: a tracker never stops a run.
    """
    mirrors: list[Mirror] = []
    for backend in backends:
        try:
            if backend == "tensorboard":
                mirrors.append(TensorBoardMirror(run_dir, params, config_yaml))
            elif backend == "wandb":
                mirrors.append(
                    WandbMirror(
                        run_dir,
                        params,
                        project=project,
                        run_name=run_name,
                        mode=wandb_mode,
                        entity=wandb_entity,
                    )
                )
        except MissingExtraError:
            raise
        except Exception as exc:  # a tracker must never stop training
            log.warning(
                "%s tracking is off for this run (%s: %s); the run directory stays complete",
                backend,
                type(exc).__name__,
                str(exc).splitlines()[0][:300] if str(exc) else "",
            )
    return mirrors


class TensorBoardMirror:
    """Event files in ``<run_dir>/tensorboard`` (see the module)."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, params: dict[str, Any], config_yaml: str) -> None:
        try:
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MissingExtraError(
                "tensorboard", "tensorboard", "track.backends: tensorboard"
            ) from None
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))
        self.params = {k: _hparam(v) for k, v in params.items()}
        self.finals: dict[str, float] = {}
        self.writer.add_text("config", f"```yaml\n{config_yaml}\n```", 0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in _finite(metrics).items():
            self.writer.add_scalar(key, value, step)
            if key.startswith("test/"):
                self.finals[key] = value

    def log_step_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in _finite(metrics).items():
            self.writer.add_scalar(key, value, step)

    def log_figures(self, figures: list[Figure]) -> None:
        import numpy as np

        for title, png in figures:
            image = np.asarray(_decode_png(png).convert("RGB"))
            self.writer.add_image(f"report/{_slug(title)}", image, 0, dataformats="HWC")

    def finish(self, status: str) -> None:
        if self.finals:
            # In the run's own folder (run_name "."), not a timestamped one beside it.
            self.writer.add_hparams(self.params, self.finals, run_name=".")
        self.writer.add_text("status", status, 0)
        self.writer.close()


class WandbMirror:
    """One Weights & Biases run (see the module)."""

    name = "wandb"

    def __init__(
        self,
        run_dir: Path,
        params: dict[str, Any],
        *,
        project: str,
        run_name: str,
        mode: str = "auto",
        entity: str | None = None,
    ) -> None:
        try:
            import wandb
        except ImportError:
            raise MissingExtraError("wandb", "wandb", "track.backends: wandb") from None
        online = mode == "online" or (mode == "auto" and bool(os.environ.get("WANDB_API_KEY")))
        self.wandb = wandb
        self.run = wandb.init(
            project=_wandb_name(project),
            entity=entity,
            name=run_name,
            # The same id for a resumed run, which then continues the W&B run it started.
            id=_wandb_name(f"{project}-{run_dir.name}"),
            resume="allow",
            mode="online" if online else "offline",
            dir=str(run_dir),
            config=params,
            settings=wandb.Settings(
                # mlsmith's own progress owns the terminal: no console capture, no banners.
                console="off",
                silent=True,
                init_timeout=WANDB_INIT_TIMEOUT_S,
            ),
        )
        self.run.define_metric("epoch")
        self.run.define_metric("global_step")
        self.defined: set[str] = set()

    def _define(self, keys: list[str], axis: str) -> None:
        for key in keys:
            if key not in self.defined:
                self.run.define_metric(key, step_metric=axis)
                self.defined.add(key)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        values = _finite(metrics)
        self._define(list(values), "epoch")
        self.run.log({**values, "epoch": step})

    def log_step_metrics(self, metrics: dict[str, float], step: int) -> None:
        values = _finite(metrics)
        self._define(list(values), "global_step")
        self.run.log({**values, "global_step": step})

    def log_figures(self, figures: list[Figure]) -> None:
        images = {
            f"report/{_slug(title)}": self.wandb.Image(_decode_png(png), caption=title)
            for title, png in figures
        }
        if images:
            self.run.log(images)

    def finish(self, status: str) -> None:
        self.run.summary["mlsmith_status"] = status
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def _decode_png(png: bytes) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(png))


def _slug(title: str) -> str:
    """A figure title as a tag: lower case, words joined by underscores."""
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") or "figure"


def _wandb_name(text: str) -> str:
    """``text`` with only the characters W&B takes in project names and run ids."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:128] or "mlsmith"


def _hparam(value: Any) -> bool | int | float | str:
    """A param as TensorBoard's HParams tab takes it (lists and None as text)."""
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)
