"""One training run end to end, and the first steps that train, check and lr-find share.

``build(cfg)`` seeds every RNG, prepares the data and builds the untrained model, so ``train``,
``check`` and ``lr-find`` all see the same splits and the same initial weights. ``run_training``
is ``mlsmith train``: build, the pre-flight checks, the run directory, tracking, fit, evaluation
of the best weights on the test split, reports. Tuning runs one ``run_training`` per trial.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsmith.config import Config, load_config
from mlsmith.crossval import cross_validate, plan_folds
from mlsmith.errors import ConfigError, DataError, MlsmithError, PreflightError, RunError
from mlsmith.files import read_json, write_json, write_text
from mlsmith.packaging.reference import reference_rows
from mlsmith.packaging.writer import (
    CheckRows,
    TrainingRows,
    check_export_settings,
    check_rows,
    training_rows,
)
from mlsmith.reports import report_figures, write_reports_safely
from mlsmith.run import (
    CONFIG_FILE,
    INFO_FILE,
    LOCK_FILE,
    METRICS_FILE,
    PREFLIGHT_FILE,
    SCENE_KINDS,
    Run,
    Scored,
    capture_environment,
    check_output_dir,
    code_version,
    new_run_dir,
    record_stopped,
    write_lock,
)
from mlsmith.training.history import HISTORY_FILE, STEPS_FILE

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    import pandas as pd

    from mlsmith.baselines import BaselineOutputs, BaselineScores
    from mlsmith.checks import CheckReport
    from mlsmith.config import ExportConfig
    from mlsmith.data.base import PreparedData, Preprocessor
    from mlsmith.models.base import FitSummary, Model
    from mlsmith.tasks import Task
    from mlsmith.tracking import Tracker
    from mlsmith.training.lr_finder import LRFindResult

log = logging.getLogger(__name__)

# Where rank 0 writes its run directory's path for launch_training (an environment variable).
RUN_RECORD = "MLSMITH_RUN_RECORD"

# Under <output_dir>/<experiment>: one file per torchrun job naming the run it started.
TORCHRUN_JOBS = ".torchrun-jobs"

# Keys that may differ between a run's stored config and the one given with --resume.
RESUMABLE_KEYS = ("train.epochs", "experiment", "output_dir", "track.", "train.distributed.")


def build(cfg: Config, *, preprocessor: Preprocessor | None = None) -> tuple[PreparedData, Model]:
    """The prepared data and the untrained model, seeded as every run is.

    ``preprocessor`` (a resumed run's) is used instead of fitting a new one.
    """
    from mlsmith import families
    from mlsmith.imbalance import configure_task
    from mlsmith.training.reproducibility import seed_everything

    seed_everything(cfg.seed)
    data = families.data_kind(cfg.data.type).prepare(cfg, preprocessor=preprocessor)
    # Seed again so the initial weights do not depend on how much randomness data prep used.
    seed_everything(cfg.seed)
    model = families.model_family(cfg.model.type)(cfg, data.preprocessor)
    # Class weights, focal loss, your loss, label smoothing and a fixed threshold, checked
    # against the task.
    configure_task(cfg, data.task, data.train.target, model)
    _check_optimizer(cfg, model)
    return data, model


def _feature_importance(cfg: Config, run_dir: Path, model: Model, data: PreparedData) -> None:
    """``importance.json``: permutation importance on the validation split (and the trees'
    gain) for a tabular model; nothing for other data, rankings, or with repeats 0."""
    features = getattr(data.preprocessor, "features", None)
    if (
        cfg.eval.importance_repeats == 0
        or data.preprocessor.kind != "tabular"
        or model.task.kind == "ranking"
        or not features
        or not len(data.val)
    ):
        return
    from mlsmith.importance import IMPORTANCE_FILE, gain_importance, permutation_importance

    started = time.perf_counter()
    record: dict[str, Any] = {
        "permutation": permutation_importance(
            model, data.val, list(features), repeats=cfg.eval.importance_repeats, seed=cfg.seed
        )
    }
    gain = gain_importance(model, list(features))
    if gain is not None:
        record["gain"] = gain
    write_json(run_dir / IMPORTANCE_FILE, record)
    top = record["permutation"]["features"][:3]
    log.info(
        "feature importance (%s lost when shuffled, val): %s (%.1f s)",
        record["permutation"]["metric"],
        ", ".join(f"{f['name']} {f['importance']:.3g}" for f in top),
        time.perf_counter() - started,
    )


def _image_grid(run_dir: Path, images: np.ndarray, test: Scored, task: Task) -> None:
    """``prediction_grid.png``: the test images the model got most surely right, most surely
    wrong, and most confused; for the report. A failure to draw costs only the picture."""
    import numpy as np

    try:
        from mlsmith.reports.evaluation_plots import GRID_FILE, prediction_grid

        decoded = np.asarray(test.decoded)
        proba = decoded if decoded.ndim == 2 else np.stack([1 - decoded, decoded], axis=1)
        png = prediction_grid(images, np.asarray(test.truth), proba, [str(c) for c in task.classes])
    except Exception as error:  # the run is scored; a picture must not fail it
        log.warning("no prediction grid (%s: %s)", type(error).__name__, error)
        return
    if png is not None:
        from mlsmith.files import write_bytes

        write_bytes(run_dir / GRID_FILE, png)


def _scene_figures(run_dir: Path, images: np.ndarray, val: Scored, task: Task) -> None:
    """``scene_grid.png`` (validation images, true and predicted boxes or masks) and, for
    detection, ``pr_curves.png``; for the report. A failure to draw costs only the picture."""
    from mlsmith.files import write_bytes
    from mlsmith.reports import scene_plots

    try:
        grid = scene_plots.scene_grid(images, val.truth, val.decoded, task.kind, task.classes)
        curves = None
        if task.kind == "detection":
            from mlsmith.vision_metrics import precision_recall
            from mlsmith.vision_tasks import predicted_boxes, truth_boxes

            precision = precision_recall(
                truth_boxes(val.truth), predicted_boxes(val.decoded), len(task.classes)
            )
            curves = scene_plots.pr_curves(precision, task.classes)
    except Exception as error:  # the run is scored; a picture must not fail it
        log.warning("no validation figures (%s: %s)", type(error).__name__, error)
        return
    for name, png in ((scene_plots.GRID_FILE, grid), (scene_plots.PR_FILE, curves)):
        if png is not None:
            write_bytes(run_dir / name, png)


def _slice_columns(cfg: Config, data: PreparedData) -> dict[str, pd.Series]:
    """The test split's values of each ``eval.slices`` column, row for row with its scores
    (a missing column is a DataError naming the key; a ranking is scored per query, not per
    slice)."""
    if not cfg.eval.slices:
        return {}
    if data.task.kind == "ranking":
        raise ConfigError(
            "eval.slices: a ranking is scored per query; slices score classifiers and "
            "regressors. Remove eval.slices"
        )
    frame = data.frames.get("test")
    if frame is None or data.test is None:
        raise ConfigError("eval.slices: the run has no test split to slice")
    labelled = data.preprocessor.labelled_rows(frame, "test split")
    missing = [c for c in cfg.eval.slices if c not in labelled.columns]
    if missing:
        raise DataError(
            f"eval.slices: the test split has no column {', '.join(map(repr, missing))}; "
            f"columns: {', '.join(map(str, labelled.columns[:20]))}"
        )
    if len(labelled) != len(data.test):
        raise DataError(
            f"eval.slices: {len(labelled)} labelled test rows but {len(data.test)} scored; "
            "slices need one value per scored row"
        )
    return {c: labelled[c].reset_index(drop=True) for c in cfg.eval.slices}


def _score_slices(
    cfg: Config, run: Run, task: Task, test: Scored, columns: dict[str, pd.Series]
) -> None:
    """The test split's metrics per slice, written under ``slices`` in metrics.json."""
    from mlsmith.slices import SLICES_KEY, SliceSettings, slice_metrics, summary_lines

    settings = SliceSettings(
        bins=cfg.eval.slice_bins,
        min_rows=cfg.eval.min_slice_rows,
        n_resamples=cfg.eval.bootstrap,
        confidence=cfg.eval.confidence,
        seed=cfg.seed,
    )
    sliced = slice_metrics(task.kind, test.truth, test.decoded, columns, settings, task.threshold)
    run.record_sections({SLICES_KEY: sliced})
    for line in summary_lines(sliced):
        log.info("slices: %s", line)


def _check_optimizer(cfg: Config, model: Model) -> None:
    """Your optimizer class (``train.optimizer.name`` as a path) imports and is an optimizer,
    before any work; only a torch family has an optimizer to replace."""
    from mlsmith.config.base import is_user_path

    name = cfg.train.optimizer.name
    if not is_user_path(name):
        return
    from mlsmith.models.neural import NeuralModel

    if not isinstance(model, NeuralModel):
        raise ConfigError(
            f"train.optimizer.name: your optimizer trains the torch families only, not "
            f"model.type '{cfg.model.type}'; remove it for this model"
        )
    from mlsmith.training.optimizers import optimizer_class

    optimizer_class(name)


def run_training(
    cfg: Config,
    *,
    resume: str | Path | None = None,
    callbacks: Sequence[object] = (),
    progress: bool | None = None,
    epoch_lines: bool = True,
) -> Run:
    """Train, evaluate on the held-out test split and track one run (see ``mlsmith.train``).

    Started by torchrun, every process runs this: they join one process group and train
    together; rank 0 alone writes the run (see :mod:`mlsmith.training.distributed`).
    """
    from mlsmith.training import distributed

    if cfg.data.type == "timeseries":
        from mlsmith.forecasting_pipeline import run_forecasting

        if resume is not None:
            raise ConfigError(
                "--resume: a forecasting run keeps no checkpoint (its backtest refits every "
                "window); train it again"
            )
        return run_forecasting(cfg)
    if resume is None:
        resume = _restarted_run(cfg)
    with distributed.process_group(cfg.train.device) as world:
        if world.active:
            _check_distributable(cfg)
        if not world.main:
            return _train_replica(cfg, resume=resume, callbacks=callbacks)
        run = _run_training(
            cfg, resume=resume, callbacks=callbacks, progress=progress, epoch_lines=epoch_lines
        )
    if os.environ.get(RUN_RECORD):  # launch_training waits for this path
        write_text(Path(os.environ[RUN_RECORD]), str(run.path))
    return run


def _job_record(cfg: Config) -> Path | None:
    """Where a torchrun job notes the run it started, so that its restarted workers find it."""
    from mlsmith.training import distributed

    job = distributed.job_id()
    if job is None or not distributed.launched():
        return None
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", job)
    return Path(cfg.output_dir) / cfg.experiment / TORCHRUN_JOBS / name


def _restarted_run(cfg: Config) -> Path | None:
    """Under ``torchrun --max-restarts``, after a worker died and torchrun restarted them all:
    the run this job started, to continue from its last checkpoint (None on a first attempt,
    or when the run had not checkpointed yet: the job then starts over).

    Every rank reads the same record (the output folder is shared, as resuming needs), and
    no rank is writing while torchrun restarts them, so all take the same decision.
    """
    from mlsmith.models.neural import CHECKPOINT_DIR
    from mlsmith.training import distributed
    from mlsmith.training.checkpoint import LAST

    record = _job_record(cfg)
    if record is None or distributed.restarts() == 0 or not record.is_file():
        return None
    run_dir = Path(record.read_text().strip())
    if not (run_dir / CHECKPOINT_DIR / LAST).is_file():
        return None
    if distributed.launched_rank() == 0:
        log.warning(
            "torchrun restarted the workers (restart %d): continuing %s from its last checkpoint",
            distributed.restarts(),
            run_dir,
        )
    return run_dir


def launch_training(cfg: Config, *, resume: str | Path | None = None) -> Run:
    """``train.distributed.nproc`` > 1 outside torchrun: run ``mlsmith train`` under torchrun
    with that many processes on this node, wait for it, and return the run."""
    import tempfile

    from mlsmith.training import distributed

    nproc = cfg.train.distributed.nproc
    _check_distributable(cfg)  # before any process starts: a config error is exit 2 here
    with tempfile.TemporaryDirectory(prefix="mlsmith-launch-") as folder:
        # The resolved config: its paths are absolute, so it reads the same from anywhere.
        config_path, record = Path(folder) / "config.yaml", Path(folder) / "run"
        write_text(config_path, cfg.to_yaml())
        argv = ["train", str(config_path), "--no-progress"]
        argv += ["--resume", str(resume)] if resume is not None else []
        code = distributed.launch(nproc, argv, env={RUN_RECORD: str(record)})
        if code != 0 or not record.is_file():
            raise RunError(
                f"training on {nproc} processes failed (torchrun exited with {code}); the "
                "workers' messages are above"
            )
        return Run(record.read_text())


def _check_distributable(cfg: Config) -> None:
    """Refuse, before any work, what several processes cannot train together."""
    from mlsmith import families
    from mlsmith.models.neural import NeuralModel

    if not issubclass(families.model_family(cfg.model.type), NeuralModel):
        raise ConfigError(
            f"model.type '{cfg.model.type}' trains on one process (its library has its own "
            "threads); run it without torchrun and train.distributed.nproc=1"
        )
    if cfg.eval.cv is not None:
        raise ConfigError(
            "eval.cv: cross-validation trains its folds one after another on one process; "
            "run it without torchrun (or set eval.cv=null)"
        )
    if cfg.train.distributed.strategy == "fsdp":
        if cfg.train.ema is not None:
            raise ConfigError(
                "train.ema: the moving average keeps a whole copy of the weights, which "
                "train.distributed.strategy=fsdp shards; use strategy ddp or train.ema=null"
            )
        if cfg.train.precision == "16-mixed":
            raise ConfigError(
                "train.precision: 16-mixed needs a gradient scaler that sees every shard, "
                "which train.distributed.strategy=fsdp does not have; use bf16-mixed (FSDP "
                "computes in bf16 and reduces in fp32) or 32"
            )


def _train_replica(cfg: Config, *, resume: str | Path | None, callbacks: Sequence[object]) -> Run:
    """What a rank other than 0 does: build as rank 0 does, train its share, write nothing.

    It follows rank 0's steps that involve every rank (the learning rate of ``lr: auto``, the
    run directory) and returns once training ends; rank 0 evaluates and reports.
    """
    from mlsmith.models.base import FitContext
    from mlsmith.training import distributed

    preprocessor = None
    if resume is not None:
        run_dir = Path(resume).resolve()
        cfg = config_for_resume(run_dir, cfg)
        if (run_dir / "preprocessing.json").is_file():
            from mlsmith import families

            preprocessor = families.data_kind(cfg.data.type).load_preprocessor(run_dir)
    data, model = build(cfg, preprocessor=preprocessor)
    model.config = distributed.broadcast(cfg)  # rank 0's config, its lr: auto resolved
    path = distributed.broadcast("")  # rank 0's run directory, once it exists
    context = FitContext(run_dir=Path(path), callbacks=list(callbacks), resume=resume is not None)
    model.fit(data, context)
    return Run(path)


def _run_training(
    cfg: Config,
    *,
    resume: str | Path | None,
    callbacks: Sequence[object],
    progress: bool | None,
    epoch_lines: bool,
) -> Run:
    """Everything ``run_training`` does on rank 0 (the only rank of a one-process run)."""
    from mlsmith.imbalance import fit_threshold, imbalance_notes
    from mlsmith.models.base import FitContext
    from mlsmith.registry import register_after_training
    from mlsmith.tracking import Tracker, final_metrics, run_tags
    from mlsmith.training import distributed
    from mlsmith.training.device import resolve_device
    from mlsmith.training.history import HistoryWriter
    from mlsmith.training.progress import ProgressReporter

    check_output_dir(cfg.output_dir)
    info: dict[str, Any] = {}
    run_dir: Path | None = None
    preprocessor = None
    if resume is not None:
        run_dir = Path(resume).resolve()
        cfg = config_for_resume(run_dir, cfg)
        info = read_json(run_dir / INFO_FILE) if (run_dir / INFO_FILE).is_file() else {}
        if info.get("data_fingerprint"):
            from mlsmith import families

            preprocessor = families.data_kind(cfg.data.type).load_preprocessor(run_dir)
    device = str(resolve_device(cfg.train.device))
    data, model = build(cfg, preprocessor=preprocessor)
    if info.get("data_fingerprint") and info["data_fingerprint"] != data.fingerprint:
        raise RunError(
            f"cannot resume {run_dir}: the data changed since it started (fingerprint "
            f"{data.fingerprint}, recorded {info['data_fingerprint']})"
        )
    package = cfg.export.package and _packageable(model)
    if package:
        check_export_settings(model, cfg.export)  # quantize or prune on a tree: exit 2 now
    # lr: auto becomes a number here; config.yaml keeps "auto", run.json the rate chosen.
    trained_cfg, lr_auto = resolve_lr(cfg, data, model, info.get("lr_auto"))
    world = distributed.current()
    distributed.broadcast(trained_cfg, world)  # the other ranks train with the same rate
    checks = (
        _preflight(trained_cfg, data, model) if cfg.train.preflight and resume is None else None
    )
    # Cross-validation keeps the raw rows (its folds refit the preprocessing); errors now.
    folds = plan_folds(cfg, data, resume=resume) if cfg.eval.cv is not None else None
    package_rows = check_rows(data) if package else None
    # Pruning fine-tunes on the training split; static quantization calibrates on its rows.
    optimised = cfg.export.quantize is not None or cfg.export.prune is not None
    package_training = training_rows(data) if package_rows is not None and optimised else None
    package_reference = reference_rows(data) if package_rows is not None else None
    # Fitted before the raw rows go: the text baseline reads the raw texts.
    baseline = _fit_baseline(cfg, data) if cfg.eval.baseline else None
    slice_columns = _slice_columns(cfg, data)
    data.frames.clear()  # the raw rows were only needed by the checks (and the package's)
    if run_dir is None:
        # Only now: a config, data or pre-flight error must not leave a run directory behind.
        run_dir = new_run_dir(cfg)
        record = _job_record(cfg)
        if record is not None:  # torchrun may restart this job: its workers continue this run
            write_text(record, str(run_dir))
    info["world_size"] = world.size
    info["global_batch_size"] = cfg.train.batch_size * world.size * cfg.train.grad_accum_steps
    tracker: Tracker | None = None
    try:
        # From here on a run directory exists: whatever stops the run, run.json says so.
        if checks is not None:
            write_json(run_dir / PREFLIGHT_FILE, checks.to_dict())
        environment = capture_environment(device, cfg)
        write_text(run_dir / CONFIG_FILE, cfg.to_yaml())
        write_lock(run_dir, device)
        data.preprocessor.save(run_dir)
        if lr_auto is not None:
            info["lr_auto"] = _save_lr_find(run_dir, lr_auto)
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
        params = cfg.flat()
        if lr_auto is not None:
            params["train.optimizer.lr_auto"] = lr_auto["lr"]
        info["mlflow_run_id"] = tracker.start(
            run_name=run_dir.name,
            params=params,
            tags=run_tags(run_dir, data.fingerprint, environment),
            resume_id=info.get("mlflow_run_id"),
            run_dir=run_dir,
            config_yaml=cfg.to_yaml(),
        )
        info["tracking_uri"] = tracker.uri if tracker.active else None
        write_json(run_dir / INFO_FILE, info)

        context = FitContext(
            run_dir=run_dir,
            callbacks=[
                *([ProgressReporter(live=progress)] if progress or epoch_lines else []),
                HistoryWriter(run_dir),
                tracker,
                *callbacks,
            ],
            resume=resume is not None,
            metadata={"config": cfg.to_dict(), "code_version": code_version(environment)},
        )
        distributed.broadcast(str(run_dir), world)  # the other ranks may start training
        started = time.perf_counter()
        crossed = cross_validate(trained_cfg, folds, data, context, tracker) if folds else None
        if crossed is not None:
            info["cv"] = crossed.info
        if crossed is not None and crossed.kept is not None:
            data, model, summary = crossed.kept  # eval.cv.final: best_fold
            if package_training is not None:
                package_training = training_rows(data)  # encoded as the kept fold's model reads
        else:
            summary = model.fit(data, context)
        threshold = fit_threshold(cfg, model, data.val)
        if threshold is not None:
            # The task now holds the threshold: saved with it, predict and the package use it.
            data.preprocessor.save(run_dir)
            info["threshold"] = threshold
            write_json(run_dir / INFO_FILE, info)
        run = Run(run_dir)
        run.model = model
        scored = {"val": run.score_split(data.val, "val")}
        if cfg.eval.report and model.task.kind in SCENE_KINDS:
            _scene_figures(run_dir, data.val.inputs["image"], scored["val"], model.task)
        _feature_importance(cfg, run_dir, model, data)
        if data.test is not None:
            scored["test"] = run.score_split(data.test, "test")
            if slice_columns:
                _score_slices(cfg, run, model.task, scored["test"], slice_columns)
            if cfg.eval.report and "image" in data.test.inputs and model.task.is_classification:
                _image_grid(run_dir, data.test.inputs["image"], scored["test"], model.task)
        results = {split: s.metrics for split, s in scored.items()}
        compared = _score_baseline(run, baseline, scored) if baseline is not None else None
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
        observations=_observations(cfg, summary, compared) + imbalance_notes(model.task, threshold),
        train_seconds=info.get("train_seconds", 0.0) + time.perf_counter() - started,
        finished=time.time(),
    )
    if compared is not None:
        info["baseline"] = compared.summary
    write_json(run_dir / INFO_FILE, info)
    with tracker.closing_complete_run(run_dir):
        if package_rows is not None:
            info["package"] = _write_package(
                run_dir, model, package_rows, cfg, tracker, package_training, package_reference
            )
            write_json(run_dir / INFO_FILE, info)
        # Per-epoch keys (val/accuracy...) already have one point per epoch: log only their CIs.
        per_epoch = {key for row in summary.history for key in row}
        if compared is not None:
            results |= {
                f"{section}/{split}": metrics
                for section, by_split in compared.sections.items()
                for split, metrics in by_split.items()
            }
        tracker.log_metrics(final_metrics(results, per_epoch), step=summary.best_epoch or 0)
        tracker.log_artifacts(
            [
                run_dir / f
                for f in (
                    CONFIG_FILE,
                    METRICS_FILE,
                    HISTORY_FILE,
                    "preprocessing.json",
                    "importance.json",
                    LOCK_FILE,
                )
                if (run_dir / f).is_file()
            ]
            + model.artifacts(run_dir)
        )
        reports = write_reports_safely(run_dir) if cfg.eval.report else []
        tracker.log_artifacts([*reports, run_dir / STEPS_FILE])
        if reports and tracker.mirrors:
            tracker.log_figures(report_figures(reports[0]))
        if cfg.track.registration is not None:
            # After the reports: the version's description is the model card. Never fails.
            info["registration"] = register_after_training(run_dir, cfg.track.registration)
            write_json(run_dir / INFO_FILE, info)
    return run


def resolve_lr(
    cfg: Config, data: PreparedData, model: Model, recorded: dict[str, Any] | None = None
) -> tuple[Config, dict[str, Any] | None]:
    """``cfg`` with ``train.optimizer.lr: auto`` replaced by the LR range test's choice (set on
    ``model`` too), and what run.json records; ``cfg`` itself when the rate is a number.

    ``recorded``: a resumed run's ``lr_auto``, reused rather than measured again.
    """
    if cfg.train.optimizer.lr != "auto":
        return cfg, None
    from mlsmith.models.neural import NeuralModel

    if not isinstance(model, NeuralModel):
        raise ConfigError(
            f"train.optimizer.lr: 'auto' runs a learning-rate range test, which needs a network "
            f"trained by gradient descent; model.type '{cfg.model.type}' is not one (give a "
            "number, or leave the key out)"
        )
    if recorded is not None and isinstance(recorded.get("lr"), float):
        record = dict(recorded)
    else:
        import tempfile

        from mlsmith.training.lr_finder import choose_lr

        with tempfile.TemporaryDirectory() as folder:
            _, record = choose_lr(cfg, data, model.network, Path(folder))
            # Kept in memory until the run directory exists (after the pre-flight checks).
            record["files"] = {f.name: f.read_bytes() for f in Path(folder).iterdir()}
    optimizer = cfg.train.optimizer.model_copy(update={"lr": record["lr"]})
    resolved = cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"optimizer": optimizer})}
    )
    model.config = resolved
    return resolved, record


def _save_lr_find(run_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write the range test's table and plot into ``run_dir/lr_find/``; run.json's record."""
    from mlsmith.files import write_bytes

    record = dict(record)
    files = record.pop("files", {})
    for name, content in files.items():
        write_bytes(run_dir / "lr_find" / name, content)
    if files:
        record["plot"] = "lr_find/lr_find.png"
    return record


def _packageable(model: Model) -> bool:
    """False, with a warning saying why, for a family that has no package (scikit-learn)."""
    from mlsmith.packaging.writer import package_unsupported

    reason = package_unsupported(model)
    if reason is not None:
        log.warning("no package written: %s; set export.package=false to silence this", reason)
    return reason is None


def check(cfg: Config, *, quick: bool = False) -> CheckReport:
    """Build as ``train`` does and run every check (``mlsmith check``); trains nothing.

    Data that cannot be read is a failed row, not an error. Global RNG states are restored
    afterwards, so calling this from a notebook does not reseed anything.
    """
    from mlsmith.checks import run_checks, unreadable_data
    from mlsmith.training.reproducibility import restore_rng_states, rng_states

    if cfg.data.type == "timeseries":  # no rows, no network: the series themselves
        from mlsmith.checks.series import series_checks

        return series_checks(cfg)
    started = time.perf_counter()
    states = rng_states()
    try:
        log.info("check: reading and splitting the data")
        try:
            data, model = build(cfg)
        except DataError as error:
            return unreadable_data(cfg, error, quick=quick)
        log.info(
            "check: data, splits and the model on a real batch%s",
            "" if quick else ", then one-batch overfitting",
        )
        cfg, _ = resolve_lr(cfg, data, model)
        report = run_checks(cfg, data, model, quick=quick)
    finally:
        restore_rng_states(states)
    log.info("check: done in %.1f s", time.perf_counter() - started)
    return report


def lr_find(
    cfg: Config,
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    steps: int = 100,
    output: str | Path | None = None,
) -> LRFindResult:
    """Build as ``train`` does, then run the learning-rate range test on that model."""
    from mlsmith.models.neural import NeuralModel
    from mlsmith.training.lr_finder import check_range, find_lr

    check_range(min_lr, max_lr, steps)
    data, model = build(cfg)
    if not isinstance(model, NeuralModel):
        raise ConfigError(
            f"lr-find: model.type '{cfg.model.type}' is not trained by gradient descent"
        )
    return find_lr(
        cfg, data, model.network, min_lr=min_lr, max_lr=max_lr, steps=steps, output=output
    )


def config_for_resume(run_dir: Path, requested: Config) -> Config:
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
    # The number of processes is the resuming invocation's own.
    keep = [f"train.epochs={requested.train.epochs}"]
    keep += [f"train.distributed.nproc={requested.train.distributed.nproc}"]
    return load_config(stored, keep)


def _write_package(
    run_dir: Path,
    model: Model,
    rows: CheckRows,
    cfg: Config,
    tracker: Tracker,
    training: TrainingRows | None,
    reference: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """``<run>/package/``, logged as the run's MLflow model; a failure here is a warning: the
    run itself is complete, and ``mlsmith export`` can try again."""
    from mlsmith.packaging.writer import PACKAGE_DIR

    try:
        export = _package(run_dir, model, rows, cfg.export, training=training, reference=reference)
    except Exception as error:  # the model is saved; packaging must never cost the user the run
        what = str(error) if isinstance(error, MlsmithError) else f"{type(error).__name__}: {error}"
        log.warning("no package written (%s); retry with `mlsmith export %s`", what, run_dir)
        return {"status": "failed", "error": what}
    return _record_package(run_dir / PACKAGE_DIR, export, tracker)


def _package(
    run_dir: Path,
    model: Model,
    rows: CheckRows,
    settings: ExportConfig,
    *,
    output: Path | None = None,
    run_name: str | None = None,
    training: TrainingRows | None = None,
    reference: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Write and verify the model's package (``packaging.writer``, or for segmentation and
    detection ``packaging.scenes``); returns its export.json."""
    from mlsmith.packaging.writer import PACKAGE_DIR, write_package

    if model.task.kind in SCENE_KINDS:
        from mlsmith.packaging.scenes import write_scene_package

        return write_scene_package(
            Path(run_dir),
            model,
            rows,
            tolerance=settings.tolerance,
            output=Path(output) if output else Path(run_dir) / PACKAGE_DIR,
            run_name=run_name or Path(run_dir).name,
        )
    return write_package(
        run_dir,
        model,
        rows,
        settings,
        output=output,
        run_name=run_name,
        training=training,
        reference=reference,
    )


def _record_package(
    package: Path, export: dict[str, Any], tracker: Tracker | None
) -> dict[str, Any]:
    """Log a written package as the run's MLflow model; what run.json says about it."""
    record: dict[str, Any] = {"status": "written", "path": package.name, "serves": export["serves"]}
    record["max_abs_diff"] = max(f["max_abs_diff"] for f in export["formats"].values())
    # A pruned or int8 package differs from the trained model by design: say by how much.
    for change, extra in (("pruned", "sparsity"), ("quantized", "size_ratio")):
        if export.get(change):
            figures = export[change]
            record[change] = {k: figures[k] for k in ("metric", "difference", "ci95", extra)}
    model_id = tracker.log_package(package) if tracker is not None else None
    if model_id:
        record["mlflow_model_id"] = model_id
    log.info(
        "package: %s (serves %s; max |difference| of each export from the torch network it was "
        "made from %.2g on %d rows)",
        package,
        export["serves"],
        record["max_abs_diff"],
        export["rows_checked"],
    )
    return record


def export_run(
    run: Run,
    *,
    formats: Sequence[str] | None = None,
    tolerance: float | None = None,
    output: str | Path | None = None,
    quantize: str | None = None,
    prune: float | None = None,
) -> dict[str, Any]:
    """Write (again) the package of a finished run; see ``mlsmith.export``. Returns export.json.

    The check rows are the run's own test split, read again from its data with its saved
    preprocessing (and its training split too, for ``quantize`` and ``prune``). The package is
    logged to the run's MLflow run when written in its place.
    """
    from pydantic import ValidationError

    from mlsmith import families
    from mlsmith.config import ExportConfig, format_validation_error
    from mlsmith.packaging.writer import PACKAGE_DIR
    from mlsmith.tracking import Tracker

    cfg = run.config
    if cfg.data.type == "timeseries":
        from mlsmith.forecasting_pipeline import export_run as export_forecasting_run

        if quantize or prune or formats:
            raise ConfigError(
                "--format, --quantize and --prune: a forecasting run's package serves its "
                "forecaster as trained (a LightGBM booster, an MLP in ONNX, or a statistical "
                "model fitted at forecast time); leave them out"
            )
        return export_forecasting_run(run, output)
    cfg = run.config
    if run.info.get("status") not in (None, "finished"):
        raise RunError(
            f"{run.path}: the run is {run.info.get('status')}, not finished; "
            "export packages a finished run's best model"
        )
    options = {
        "formats": list(formats) if formats else None,
        "tolerance": tolerance,
        "quantize": quantize,
        "prune": prune,
    }
    try:
        settings = ExportConfig.model_validate(
            cfg.export.model_dump() | {k: v for k, v in options.items() if v is not None}
        )
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, "export options")) from None
    model = run.model
    check_export_settings(model, settings)
    data = families.data_kind(cfg.data.type).prepare(cfg, preprocessor=run.preprocessor)
    rows = check_rows(data)
    if rows is None:
        raise DataError(f"{run.path}: the run's data has no test or validation rows to check on")
    training = training_rows(data) if settings.quantize or settings.prune else None
    if settings.prune:
        from mlsmith.imbalance import configure_loss

        # Pruning fine-tunes with the loss the run trained with (class weights, focal...).
        configure_loss(cfg.train, model.task, data.train.target)
    target = Path(output) if output else run.path / PACKAGE_DIR
    export = _package(
        run.path,
        model,
        rows,
        settings,
        output=target,
        run_name=run.id,
        training=training,
        reference=reference_rows(data),
    )
    if output is None or target.resolve() == (run.path / PACKAGE_DIR).resolve():
        tracker = Tracker.reopen(cfg, run.info.get("mlflow_run_id"))
        info = run.info
        info["package"] = _record_package(target, export, tracker)
        write_json(run.path / INFO_FILE, info)
    return export


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


def _record_stop(
    cfg: Config, run_dir: Path, info: dict[str, Any], tracker: Tracker | None, error: BaseException
) -> None:
    """Write down why a run stopped before finishing: run.json, MLflow status, reports."""
    interrupted = record_stopped(run_dir, info, error, tracker.run_id if tracker else None)
    if tracker is not None:
        if isinstance(error, MlsmithError) and cfg.eval.report:
            # A diverged run is exactly when a person wants the curves and the diagnosis.
            tracker.log_artifacts(write_reports_safely(run_dir))
        tracker.finish("KILLED" if interrupted else "FAILED")
    if interrupted:
        log.warning(
            "the run in %s was stopped; continue it from its last checkpoint with: "
            "mlsmith train %s --resume %s",
            run_dir,
            run_dir / CONFIG_FILE,
            run_dir,
        )


def _fit_baseline(cfg: Config, data: PreparedData) -> BaselineOutputs | None:
    """The baseline beside the model (see :mod:`mlsmith.baselines`); a failure is a warning."""
    from mlsmith.baselines import fit_baseline

    text_column = getattr(cfg.data, "text_column", None) if cfg.data.type == "text" else None
    try:
        baseline = fit_baseline(data, text_column=text_column, seed=cfg.seed)
    except Exception as error:  # a comparison must never cost the user the run
        log.warning("no baseline (%s: %s)", type(error).__name__, error)
        return None
    if baseline is not None:
        log.info(
            "baseline: %s on %s, fitted in %.1f s",
            baseline.name,
            baseline.params["features"],
            baseline.seconds,
        )
    return baseline


def _score_baseline(
    run: Run, baseline: BaselineOutputs, scored: dict[str, Scored]
) -> BaselineScores | None:
    """Score the baseline on the splits the model was scored on, into metrics.json."""
    from mlsmith.baselines import score_baseline

    cfg = run.config
    try:
        compared = score_baseline(
            baseline,
            run.model.task.kind,
            {split: s.truth for split, s in scored.items()},
            {split: s.decoded for split, s in scored.items()},
            n_resamples=cfg.eval.bootstrap,
            confidence=cfg.eval.confidence,
            seed=cfg.seed,
            threshold=getattr(run.model.task, "threshold", None),
            groups={split: s.groups for split, s in scored.items() if s.groups is not None},
            ks=getattr(run.model.task, "ks", None),
        )
    except Exception as error:  # a comparison must never cost the user the run
        log.warning("baseline not scored (%s: %s)", type(error).__name__, error)
        return None
    run.record_sections(compared.sections)
    if compared.observation:
        log.warning("%s", compared.observation)
    return compared


def _observations(
    cfg: Config, summary: FitSummary, compared: BaselineScores | None = None
) -> list[str]:
    """One-line facts about how training went, for the report."""
    notes = list(summary.observations)
    if compared is not None and compared.observation:
        notes.append(compared.observation)
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
