"""The Python API: what the CLI verbs call, usable directly from notebooks and programs."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsmith.config import Config, load_config
from mlsmith.errors import ConfigError, RunError
from mlsmith.files import read_json, write_json, write_text
from mlsmith.run import (
    CONFIG_FILE,
    HISTORY_FILE,
    INFO_FILE,
    METRICS_FILE,
    Run,
    capture_environment,
    code_version,
    load_run,
    new_run_dir,
)

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.training.trainer import Trainer

log = logging.getLogger(__name__)

# Keys that may differ between a run's stored config and the one given with --resume.
RESUMABLE_KEYS = ("train.epochs", "experiment", "output_dir", "track.")

__all__ = ["evaluate", "load_run", "predict", "train"]


def train(
    config: str | Path | dict[str, Any] | Config,
    overrides: list[str] | None = None,
    *,
    resume: str | Path | None = None,
    progress: bool | None = None,
) -> Run:
    """Train, evaluate on the held-out test split and track one run; returns the :class:`Run`.

    ``config`` is a YAML path, a dict or a Config; ``overrides`` are ``a.b=value`` strings.
    ``resume`` continues the run in that directory from its last checkpoint, ending with the
    same weights as a run that was never interrupted. ``progress`` forces the live progress bar
    on or off (default: on when stderr is a terminal).
    """
    from mlsmith import registry
    from mlsmith.models.base import FitContext
    from mlsmith.tracking import Tracker
    from mlsmith.training.device import resolve_device
    from mlsmith.training.progress import ProgressReporter
    from mlsmith.training.reproducibility import seed_everything

    cfg = load_config(config, overrides)
    if resume is not None:
        run_dir = Path(resume).resolve()
        cfg = _config_for_resume(run_dir, cfg)
        info = read_json(run_dir / INFO_FILE) if (run_dir / INFO_FILE).is_file() else {}
    else:
        run_dir, info = None, {}
    data_module = registry.data_kind(cfg.data.type)
    model_family = registry.model_family(cfg.model.type)
    device = str(resolve_device(cfg.train.device))

    seed_everything(cfg.seed)
    preprocessor = None
    if run_dir is not None and info.get("data_fingerprint"):
        preprocessor = data_module.load_preprocessor(run_dir)
    data = data_module.prepare(cfg, preprocessor=preprocessor)
    if info.get("data_fingerprint") and info["data_fingerprint"] != data.fingerprint:
        raise RunError(
            f"cannot resume {run_dir}: the data changed since it started (fingerprint "
            f"{data.fingerprint}, recorded {info['data_fingerprint']})"
        )
    if run_dir is None:
        # Only now: a config or data error must not leave an empty run directory behind.
        run_dir = new_run_dir(cfg)
    environment = capture_environment(device)
    write_text(run_dir / CONFIG_FILE, cfg.to_yaml())
    data.preprocessor.save(run_dir)
    info.update(
        id=run_dir.name,
        experiment=cfg.experiment,
        status="running",
        started=info.get("started", time.time()),
        data_fingerprint=data.fingerprint,
        data=data.summary,
        environment=environment,
    )
    write_json(run_dir / INFO_FILE, info)

    # Seed again so the initial weights do not depend on how much randomness data prep used.
    seed_everything(cfg.seed)
    model = model_family(cfg, data.preprocessor)
    tracker = Tracker(cfg.track, output_dir=cfg.output_dir, experiment=cfg.experiment)
    info["mlflow_run_id"] = tracker.start(
        run_name=run_dir.name,
        params=cfg.flat(),
        tags=_tags(run_dir, data.fingerprint, environment),
        resume_id=info.get("mlflow_run_id"),
    )
    info["tracking_uri"] = tracker.uri if tracker.active else None
    write_json(run_dir / INFO_FILE, info)

    context = FitContext(
        run_dir=run_dir,
        callbacks=[ProgressReporter(live=progress), HistoryWriter(run_dir), tracker],
        resume=resume is not None,
        metadata={"config": cfg.to_dict(), "code_version": code_version(environment)},
    )
    started = time.perf_counter()
    try:
        summary = model.fit(data, context)
        run = Run(run_dir)
        run.model = model
        results = {"val": run.evaluate_split(data.val, "val")}
        if data.test is not None:
            results["test"] = run.evaluate_split(data.test, "test")
    except BaseException as error:
        info["status"] = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        write_json(run_dir / INFO_FILE, info)
        tracker.finish("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise

    # Per-epoch keys (val/accuracy...) already have one point per epoch: log only their CIs.
    per_epoch = {key for row in summary.history for key in row}
    tracker.log_metrics(_final_metrics(results, per_epoch), step=summary.best_epoch or 0)
    tracker.log_artifacts(
        [run_dir / f for f in (CONFIG_FILE, METRICS_FILE, HISTORY_FILE, "preprocessing.json")]
        + model.artifacts(run_dir)
    )
    info.update(
        status="finished",
        best_epoch=summary.best_epoch,
        stopped_early=summary.stopped_early,
        epochs_run=len(summary.history),
        train_seconds=info.get("train_seconds", 0.0) + time.perf_counter() - started,
        finished=time.time(),
    )
    write_json(run_dir / INFO_FILE, info)
    tracker.finish("FINISHED")
    return run


def evaluate(
    run: str | Path | Run,
    data: str | Path | pd.DataFrame | None = None,
    *,
    name: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Score a run's best checkpoint: its own test split, or other labelled ``data``."""
    return _as_run(run).evaluate(data, name=name)


def predict(
    run: str | Path | Run,
    data: str | Path | pd.DataFrame,
    output: str | Path | None = None,
    *,
    chunk_rows: int = 50_000,
    keep_columns: list[str] | None = None,
) -> pd.DataFrame | int:
    """Predictions for raw rows: a DataFrame in, a DataFrame out; or a file in, ``output`` written
    in chunks (any size, constant memory) and the row count returned."""
    target = _as_run(run)
    if isinstance(data, (str, Path)):
        if output is None:
            raise ConfigError("predict: a file input needs an output path")
        return target.predict_file(data, output, chunk_rows=chunk_rows, keep_columns=keep_columns)
    return target.predict(data)


class HistoryWriter:
    """Keeps ``history.csv`` equal to the trainer's history, rewritten atomically each epoch."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / HISTORY_FILE

    def on_fit_start(self, trainer: Trainer) -> None:
        # After a resume this drops epochs that ran after the checkpoint the run continues from.
        self._write(trainer.history)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        self._write(trainer.history)

    def _write(self, history: list[dict[str, float]]) -> None:
        import pandas as pd

        if history:
            write_text(self.path, pd.DataFrame(history).to_csv(index=False))
        else:
            self.path.unlink(missing_ok=True)


def _config_for_resume(run_dir: Path, requested: Config) -> Config:
    """The run's stored config, checked against the one given; only a few keys may change."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunError(f"cannot resume {run_dir}: not a run directory (no {CONFIG_FILE})")
    stored = load_config(run_dir / CONFIG_FILE)
    old, new = stored.flat(), requested.flat()
    changed = [
        k
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_KEYS)
    ]
    if changed:
        details = "; ".join(f"{k}: run has {old.get(k)!r}, given {new.get(k)!r}" for k in changed)
        raise ConfigError(
            f"cannot resume {run_dir} with a different config ({details}); only train.epochs "
            "may change when resuming"
        )
    return load_config(stored, [f"train.epochs={requested.train.epochs}"])


def _tags(run_dir: Path, fingerprint: str, environment: dict[str, Any]) -> dict[str, str]:
    tags = {
        "mlsmith.run_dir": str(run_dir),
        "mlsmith.data_fingerprint": fingerprint,
        "mlsmith.version": environment["mlsmith"],
        "mlsmith.device": environment["device"],
        "torch.version": environment["packages"].get("torch", "unknown"),
        "mlsmith.code_version": code_version(environment),
    }
    if environment.get("project_git"):
        tags["mlflow.source.git.commit"] = environment["project_git"]["commit"]
    return tags


def _final_metrics(
    results: dict[str, dict[str, Any]], per_epoch: set[str] | frozenset[str] = frozenset()
) -> dict[str, float]:
    """``{"test": {"accuracy": {"value", "ci95"}}}`` to flat MLflow metrics.

    Point values whose key is in ``per_epoch`` are left out: the best epoch's value is already in
    that metric's history, and logging it again would add a second point at the same step.
    """
    flat: dict[str, float] = {}
    for split, metrics in results.items():
        for name, entry in metrics.items():
            if entry.get("value") is not None and f"{split}/{name}" not in per_epoch:
                flat[f"{split}/{name}"] = entry["value"]
            low, high = entry.get("ci95") or (None, None)
            if low is not None and high is not None:
                flat[f"{split}/{name}_ci95_low"] = low
                flat[f"{split}/{name}_ci95_high"] = high
    return flat


def _as_run(run: str | Path | Run) -> Run:
    return run if isinstance(run, Run) else load_run(run)
