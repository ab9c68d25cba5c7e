"""The Python API: what the CLI verbs call, usable directly from notebooks and programs."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsmith.config import Config, load_config
from mlsmith.errors import ConfigError, MlsmithError, PreflightError, RunError
from mlsmith.files import read_json, write_json, write_text
from mlsmith.run import (
    CONFIG_FILE,
    HISTORY_FILE,
    INFO_FILE,
    METRICS_FILE,
    PREFLIGHT_FILE,
    STEPS_FILE,
    Run,
    capture_environment,
    check_output_dir,
    code_version,
    load_run,
    new_run_dir,
)

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.checks import CheckReport
    from mlsmith.data.base import PreparedData
    from mlsmith.models.base import FitSummary, Model
    from mlsmith.reports.compare import Comparison
    from mlsmith.tracking import Tracker
    from mlsmith.training.lr_finder import LRFindResult
    from mlsmith.training.trainer import Trainer
    from mlsmith.tuning import TuneResult

log = logging.getLogger(__name__)

# Keys that may differ between a run's stored config and the one given with --resume.
RESUMABLE_KEYS = ("train.epochs", "experiment", "output_dir", "track.")

__all__ = [
    "check",
    "compare",
    "evaluate",
    "load_run",
    "lr_find",
    "predict",
    "report",
    "train",
    "tune",
]


def train(
    config: str | Path | dict[str, Any] | Config,
    overrides: list[str] | None = None,
    *,
    resume: str | Path | None = None,
    progress: bool | None = None,
    callbacks: list[object] | None = None,
    epoch_lines: bool = True,
) -> Run:
    """Train, evaluate on the held-out test split and track one run; returns the :class:`Run`.

    ``config`` is a YAML path, a dict or a Config; ``overrides`` are ``a.b=value`` strings.
    ``resume`` continues the run in that directory from its last checkpoint, ending with the
    same weights as a run that was never interrupted. ``progress`` forces the live progress bar
    on or off (default: on when stderr is a terminal); without it ``epoch_lines`` says whether
    each epoch still gets one line on stderr (a tuning study of many trials turns them off).
    ``callbacks`` are called by the training loop after mlsmith's own (``tune`` prunes trials
    with one).
    """
    from mlsmith import registry
    from mlsmith.models.base import FitContext
    from mlsmith.tracking import Tracker
    from mlsmith.training.device import resolve_device
    from mlsmith.training.progress import ProgressReporter
    from mlsmith.training.reproducibility import seed_everything

    cfg = load_config(config, overrides)
    check_output_dir(cfg.output_dir)
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
    # Seed again so the initial weights do not depend on how much randomness data prep used.
    seed_everything(cfg.seed)
    model = model_family(cfg, data.preprocessor)
    checks = _preflight(cfg, data, model) if cfg.train.preflight and resume is None else None
    data.frames.clear()  # the raw rows were only needed by the checks
    if run_dir is None:
        # Only now: a config, data or pre-flight error must not leave a run directory behind.
        run_dir = new_run_dir(cfg)
    tracker: Tracker | None = None
    try:
        # From here on a run directory exists: whatever stops the run, run.json says so.
        if checks is not None:
            write_json(run_dir / PREFLIGHT_FILE, checks.to_dict())
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
            callbacks=[
                *([ProgressReporter(live=progress)] if progress or epoch_lines else []),
                HistoryWriter(run_dir),
                tracker,
                *(callbacks or []),
            ],
            resume=resume is not None,
            metadata={"config": cfg.to_dict(), "code_version": code_version(environment)},
        )
        started = time.perf_counter()
        summary = model.fit(data, context)
        run = Run(run_dir)
        run.model = model
        results = {"val": run.evaluate_split(data.val, "val")}
        if data.test is not None:
            results["test"] = run.evaluate_split(data.test, "test")
    except BaseException as error:
        _record_stop(cfg, run_dir, info, tracker, error)
        raise

    # The model and its metrics are complete: record that first, so an interruption in the
    # tracking and reports below cannot make a finished run look unfinished.
    info.update(
        status="finished",
        best_epoch=summary.best_epoch,
        stopped_early=summary.stopped_early,
        epochs_run=len(summary.history),
        observations=_observations(cfg, summary),
        train_seconds=info.get("train_seconds", 0.0) + time.perf_counter() - started,
        finished=time.time(),
    )
    write_json(run_dir / INFO_FILE, info)
    try:
        # Per-epoch keys (val/accuracy...) already have one point per epoch: log only their CIs.
        per_epoch = {key for row in summary.history for key in row}
        tracker.log_metrics(_final_metrics(results, per_epoch), step=summary.best_epoch or 0)
        tracker.log_artifacts(
            [run_dir / f for f in (CONFIG_FILE, METRICS_FILE, HISTORY_FILE, "preprocessing.json")]
            + model.artifacts(run_dir)
        )
        reports = _write_reports_safely(run_dir) if cfg.eval.report else []
        tracker.log_artifacts([*reports, run_dir / STEPS_FILE])
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        log.warning(
            "stopped while tracking and writing reports; the run in %s is complete (model, "
            "metrics.json); `mlsmith report %s` writes its reports",
            run_dir,
            run_dir,
        )
        raise
    tracker.finish("FINISHED")
    return run


def tune(
    config: str | Path | dict[str, Any] | Config,
    overrides: list[str] | None = None,
    *,
    trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    workers: int = 1,
) -> TuneResult:
    """Search the config's ``tune.space`` with Optuna: one tracked, pruned ``train`` per trial.

    The study lives in ``storage`` (default: SQLite in ``<output_dir>/<experiment>/``), so the
    same call resumes an interrupted study; ``trials`` (default ``tune.trials``) is the total
    across all ``workers`` processes. Writes ``best.yaml`` and ``tune_report.html`` in
    ``<output_dir>/<experiment>/tune-<study>/``.
    """
    from mlsmith.tuning import run_study

    return run_study(
        load_config(config, overrides),
        trials=trials,
        timeout=timeout,
        storage=storage,
        study=study,
        workers=workers,
    )


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


def check(
    config: str | Path | dict[str, Any] | Config,
    overrides: list[str] | None = None,
    *,
    quick: bool = False,
) -> CheckReport:
    """Pre-flight checks of config, data and model, in seconds; trains nothing for real.

    ``quick`` leaves out the one-batch overfitting test (what ``train`` runs first).
    """
    from mlsmith.checks import run_checks

    return run_checks(load_config(config, overrides), quick=quick)


def lr_find(
    config: str | Path | dict[str, Any] | Config,
    overrides: list[str] | None = None,
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    steps: int = 100,
    output: str | Path | None = None,
) -> LRFindResult:
    """The exponential learning-rate range test: loss per LR, a plot and a suggested LR."""
    from mlsmith.training.lr_finder import find_lr

    return find_lr(
        load_config(config, overrides), min_lr=min_lr, max_lr=max_lr, steps=steps, output=output
    )


def report(run: str | Path | Run) -> list[Path]:
    """Write ``report.html``, ``REPORT.md`` and ``MODEL_CARD.md`` into the run directory.

    They are also logged to the run's MLflow run when it was tracked; returns their paths.
    """
    from mlsmith.reports import write_reports

    target = _as_run(run)
    paths = write_reports(target.path)
    _log_to_tracked_run(target, paths)
    return paths


def compare(runs: list[str | Path | Run], output: str | Path | None = None) -> Comparison:
    """Compare two or more runs: the config keys that differ and their headline metrics with
    CIs, also written as one HTML page with their learning curves overlaid.

    ``output`` defaults to ``compare.html`` in the working directory; the returned
    :class:`~mlsmith.reports.compare.Comparison` holds the table and the page's path
    (``.output``).
    """
    from mlsmith.reports.compare import compare_runs

    return compare_runs([_as_run(r).path for r in runs], output)


def _log_to_tracked_run(run: Run, paths: list[Path]) -> None:
    """Attach files to the MLflow run a finished run was tracked in, if any."""
    from mlsmith.tracking import Tracker

    tracker = Tracker.reopen(run.config, run.info.get("mlflow_run_id"))
    if tracker is not None:
        tracker.log_artifacts(paths)


class HistoryWriter:
    """Keeps ``history.csv`` (per epoch) and ``steps.csv`` (per optimizer step) equal to the
    trainer's records, rewritten atomically each epoch."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / HISTORY_FILE
        self.steps_path = run_dir / STEPS_FILE

    def on_fit_start(self, trainer: Trainer) -> None:
        # After a resume this drops epochs that ran after the checkpoint the run continues from.
        self._write(trainer)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        self._write(trainer)

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        # The steps up to a failure (a NaN loss...) are what the report needs to explain it.
        self._write(trainer)

    def _write(self, trainer: Trainer) -> None:
        import pandas as pd

        from mlsmith.training.diagnostics import STEP_COLUMNS

        if trainer.history:
            write_text(self.path, pd.DataFrame(trainer.history).to_csv(index=False))
        else:
            self.path.unlink(missing_ok=True)
        if trainer.step_rows:
            frame = pd.DataFrame(trainer.step_rows, columns=list(STEP_COLUMNS))
            frame = frame.astype({"step": "int64", "epoch": "int64"})
            write_text(self.steps_path, frame.to_csv(index=False))
        else:
            self.steps_path.unlink(missing_ok=True)


def _record_stop(
    cfg: Config, run_dir: Path, info: dict[str, Any], tracker: Tracker | None, error: BaseException
) -> None:
    """Write down why a run stopped before finishing: run.json, MLflow status, reports."""
    interrupted = isinstance(error, KeyboardInterrupt)
    info["status"] = "interrupted" if interrupted else "failed"
    if isinstance(error, MlsmithError):
        info["error"] = str(error)
    write_json(run_dir / INFO_FILE, info)
    if tracker is not None:
        if isinstance(error, MlsmithError) and cfg.eval.report:
            # A diverged run is exactly when a person wants the curves and the diagnosis.
            tracker.log_artifacts(_write_reports_safely(run_dir))
        tracker.finish("KILLED" if interrupted else "FAILED")
    if interrupted:
        log.warning(
            "the run in %s was stopped; continue it from its last checkpoint with: "
            "mlsmith train %s --resume %s",
            run_dir,
            run_dir / CONFIG_FILE,
            run_dir,
        )


def _preflight(cfg: Config, data: PreparedData, model: Model) -> CheckReport:
    """The quick pre-flight checks; a failing one stops the run before any training."""
    from mlsmith.checks import preflight

    started = time.perf_counter()
    report = preflight(cfg, data, model)
    for result in report.warnings:
        log.warning("pre-flight %s: %s", result.name, result.detail)
    if report.failed:
        details = "; ".join(f"{r.name}: {r.detail}" for r in report.failures)
        raise PreflightError(
            f"pre-flight checks failed: {details}. Run `mlsmith check CONFIG` for the full "
            "table, or set train.preflight=false to train anyway"
        )
    log.info(
        "pre-flight: %d checks, %d warnings, no failures (%.1f s)",
        len(report.results),
        len(report.warnings),
        time.perf_counter() - started,
    )
    return report


def _observations(cfg: Config, summary: FitSummary) -> list[str]:
    """One-line facts about how training went, for the report."""
    notes = list(summary.observations)
    # Families with their own stopping rule (boosted trees) explain it themselves.
    explained = any(note.startswith(("early stopping", "stopped")) for note in notes)
    if summary.stopped_early and summary.history and not explained:
        stop = cfg.train.early_stopping
        notes.insert(
            0,
            f"early stopping after epoch {len(summary.history)}: {stop.monitor} did not improve "
            f"for {stop.patience} epochs; best epoch {summary.best_epoch}",
        )
    return notes


def _write_reports_safely(run_dir: Path) -> list[Path]:
    """The run's reports; a failure here must not fail a run whose model is already saved."""
    from mlsmith.reports import write_reports

    try:
        paths = write_reports(run_dir)
    except Exception as error:  # a report bug must never cost the user the run
        log.warning(
            "could not write the run report (%s: %s); retry with `mlsmith report %s`",
            type(error).__name__,
            error,
            run_dir,
        )
        return []
    log.info("report: %s", paths[0])
    return paths


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
