"""The Python API: the public verbs the CLI calls, each a few lines over the pipeline, the run
directory and its reports; usable directly from notebooks and programs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsmith.config import Config, load_config
from mlsmith.errors import ConfigError, did_you_mean
from mlsmith.run import Run, load_run

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.checks import CheckReport
    from mlsmith.monitoring import MonitorResult
    from mlsmith.registry import Decision, RegisteredVersion
    from mlsmith.reports.compare import Comparison
    from mlsmith.reproduction import Reproduction
    from mlsmith.runtime.forecaster import SavedForecaster
    from mlsmith.runtime.package import Package
    from mlsmith.runtime.scene_package import ScenePackage
    from mlsmith.training.lr_finder import LRFindResult
    from mlsmith.tuning import TuneResult

__all__ = [
    "check",
    "compare",
    "evaluate",
    "export",
    "load_package",
    "load_run",
    "lr_find",
    "monitor",
    "predict",
    "promote",
    "register",
    "report",
    "reproduce",
    "serve",
    "train",
    "tune",
]

# Where ``predict`` runs: this process, in chunks; or Apache Spark, over a table's partitions.
PREDICT_ENGINES = ("local", "spark")


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
    with one). ``train.distributed.nproc`` > 1 trains on that many processes, started with
    torchrun (``callbacks`` and ``progress`` then do not reach them).
    """
    from mlsmith import pipeline
    from mlsmith.training import distributed

    cfg = load_config(config, overrides)
    if cfg.train.distributed.nproc > 1 and not distributed.launched():
        return pipeline.launch_training(cfg, resume=resume)
    return pipeline.run_training(
        cfg,
        resume=resume,
        callbacks=callbacks or [],
        progress=progress,
        epoch_lines=epoch_lines,
    )


def tune(
    config: str | Path | dict[str, Any] | Config,
    overrides: list[str] | None = None,
    *,
    trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    workers: int = 1,
    worker_index: int = 0,
) -> TuneResult:
    """Search the config's ``tune.space`` with Optuna: one tracked, pruned ``train`` per trial.

    The study lives in ``storage`` (default: SQLite in ``<output_dir>/<experiment>/``), so the
    same call resumes an interrupted study; ``trials`` (default ``tune.trials``) is the total
    across all ``workers`` processes. Writes ``best.yaml`` and ``tune_report.html`` in
    ``<output_dir>/<experiment>/tune-<study>/``. ``worker_index`` > 0 joins a study another
    process leads (on another machine): it runs queued trials and writes no results.
    """
    from mlsmith.tuning import run_study

    return run_study(
        load_config(config, overrides),
        trials=trials,
        timeout=timeout,
        storage=storage,
        study=study,
        workers=workers,
        worker_index=worker_index,
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
    engine: str = "local",
    spark_master: str | None = None,
    spark_conf: dict[str, str] | None = None,
) -> pd.DataFrame | int:
    """Predictions for raw rows: a DataFrame in, a DataFrame out; or a file in, ``output`` written
    in chunks (any size, constant memory) and the row count returned.

    ``engine="spark"`` runs the run's package (or a package folder, ``runs:/`` or ``models:/``
    URI given as ``run``) on Apache Spark over the partitions of a Parquet or CSV table (a file,
    a folder or a URI Spark reads) and writes ``output`` as partitioned Parquet; ``spark_master``
    (``local[4]``, ``spark://host:7077``, ``yarn``) and ``spark_conf`` set up the session.
    Needs ``pip install 'mlsmith[spark]'`` on this machine; executors need only the package's
    requirements and pyarrow.
    """
    _check_engine(engine, spark_master, spark_conf)
    if engine == "spark":
        if not isinstance(data, (str, Path)) or output is None:
            raise ConfigError(
                "--engine spark predicts a table on disk into an output folder: give the input "
                "as a path and an output path"
            )
        from mlsmith.registry.loading import package_folder
        from mlsmith.spark import predict_on_spark

        with package_folder(run.path if isinstance(run, Run) else run) as folder:
            return predict_on_spark(
                folder,
                data,
                output,
                master=spark_master,
                conf=spark_conf,
                chunk_rows=chunk_rows,
                keep_columns=keep_columns or [],
            )
    if not isinstance(run, Run) and (Path(run) / "MLmodel").is_file():
        raise ConfigError(
            f"{run} is a package folder, which --engine spark predicts; the local engine "
            "predicts with a run directory (the folder holding config.yaml)"
        )
    target = _as_run(run)
    if isinstance(data, (str, Path)):
        if output is None:
            raise ConfigError("predict: a file input needs an output path")
        return target.predict_file(data, output, chunk_rows=chunk_rows, keep_columns=keep_columns)
    return target.predict(data)


def forecasting_run(run: str | Path | Run) -> bool:
    """Whether ``run`` is a run directory of a forecasting (time-series) config."""
    if isinstance(run, Run):
        return run.config.data.type == "timeseries"
    config = Path(run) / "config.yaml"
    if not config.is_file():
        return False
    return load_config(config).data.type == "timeseries"


def forecast(
    run: str | Path | Run,
    horizon: int | None = None,
    *,
    history: str | Path | None = None,
    output: str | Path | None = None,
) -> pd.DataFrame | int:
    """The next ``horizon`` periods (default: the run's ``data.horizon``) of every series of a
    forecasting run, from the end of ``history`` (default: its training table), by its saved
    forecaster (a statistical model is fitted on each history): ``id`` (several series),
    ``time``, ``forecast``, ``lo_<level>``, ``hi_<level>``. A DataFrame, or with ``output``
    (.csv or .parquet) the rows written."""
    from mlsmith.forecasting_pipeline import forecast_future, write_forecasts

    target = _as_run(run)
    if target.config.data.type != "timeseries":
        raise ConfigError(
            f"--horizon: {target.path} is a {target.config.data.type} run, not a forecasting "
            "one; predict its rows with --input"
        )
    if horizon is not None and horizon < 1:
        raise ConfigError(f"--horizon: expected at least 1 period, got {horizon}")
    frame = forecast_future(target, horizon, None if history is None else str(history))
    if output is None:
        return frame
    write_forecasts(frame, Path(output))
    return len(frame)


def _check_engine(engine: str, spark_master: str | None, spark_conf: dict[str, str] | None) -> None:
    if engine not in PREDICT_ENGINES:
        raise ConfigError(
            f"--engine {engine!r}: unknown prediction engine{did_you_mean(engine, PREDICT_ENGINES)}"
            f"; choose {' or '.join(PREDICT_ENGINES)}"
        )
    if engine != "spark" and (spark_master or spark_conf):
        flag = "--spark-master" if spark_master else "--spark-conf"
        raise ConfigError(f"{flag} sets up Spark, which only --engine spark uses")


def check(
    config: str | Path | dict[str, Any] | Config,
    overrides: list[str] | None = None,
    *,
    quick: bool = False,
) -> CheckReport:
    """Pre-flight checks of config, data and model, in seconds; trains nothing for real.

    ``quick`` leaves out the one-batch overfitting test (what ``train`` runs first).
    """
    from mlsmith import pipeline

    return pipeline.check(load_config(config, overrides), quick=quick)


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
    from mlsmith import pipeline

    return pipeline.lr_find(
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


def _as_run(run: str | Path | Run) -> Run:
    return run if isinstance(run, Run) else load_run(run)


def export(
    run: str | Path | Run,
    *,
    formats: list[str] | None = None,
    tolerance: float | None = None,
    output: str | Path | None = None,
    quantize: str | None = None,
    prune: float | None = None,
    dockerfile: bool = False,
) -> dict[str, Any]:
    """Write the run's package (``<run>/package/``, or ``output``) and return ``export.json``.

    ``formats`` (default: the run's ``export.formats``) are ``onnx`` and ``torchscript`` for
    networks; each is checked against the torch model on the run's test rows and the export
    fails (:class:`~mlsmith.packaging.writer.ExportError`, exit 1) beyond ``tolerance``.
    ``quantize="int8"`` serves the ONNX model quantized by ONNX Runtime; ``prune=AMOUNT``
    (0 < AMOUNT < 1) serves the network with that share of its Linear/Conv weights pruned and
    fine-tuned; both (default: the run's ``export.quantize`` / ``export.prune``) record how the
    served model compares with the one it came from, and are networks only (ConfigError).
    ``dockerfile``: also write a Dockerfile in the package folder that serves it with
    ``mlsmith serve`` (its path is the returned record's ``dockerfile``).
    """
    from mlsmith import pipeline

    target = run if isinstance(run, Run) else load_run(run)
    result = pipeline.export_run(
        target,
        formats=formats,
        tolerance=tolerance,
        output=output,
        quantize=quantize,
        prune=prune,
    )
    if dockerfile:
        from mlsmith import __version__
        from mlsmith.packaging.docker import write_dockerfile

        package_dir = Path(output) if output else target.path / "package"
        result["dockerfile"] = str(write_dockerfile(package_dir, __version__))
    return result


def reproduce(run: str | Path | Run, *, output: str | Path | None = None) -> Reproduction:
    """Train ``run``'s config again from its directory alone and compare the test metrics.

    The data at the config's paths must be the data the run fingerprinted
    (:class:`~mlsmith.reproduction.DataChangedError`, exit 1, before any training); every
    version that differs from the run's ``requirements.lock`` is a warning, listed in
    ``environment``. The new run goes to ``output`` (default: the run's own output folder).
    """
    from mlsmith.reproduction import reproduce as run_again

    return run_again(run, output)


def load_package(
    source: str | Path, *, tracking_uri: str | None = None
) -> Package | SavedForecaster | ScenePackage:
    """A package ready to ``predict(rows)``: a package or run directory, ``runs:/<id>/package``
    or ``models:/<name>@<alias>`` (from ``tracking_uri``, default ``MLFLOW_TRACKING_URI``).
    A forecasting run's package is its forecaster: ``predict(history, horizon)`` forecasts the
    next periods of the history table's series. A segmentation or detection run's package
    predicts images (a ``path`` column of files or their bytes): masks, or boxes."""
    from mlsmith.registry.loading import load_any

    return load_any(source, tracking_uri=tracking_uri)


def register(
    run: str | Path | Run,
    name: str,
    *,
    alias: str | None = None,
    tracking_uri: str | None = None,
) -> RegisteredVersion:
    """Register the run's package as a new version of ``name`` in MLflow's model registry.

    The version is tagged with the run's test metrics and intervals, data fingerprint, code
    version and parity figures, and described by its ``MODEL_CARD.md``; ``alias`` is pointed at
    it. The store is ``tracking_uri``, else the one the run was tracked to.
    """
    from mlsmith.registry import register as register_run

    return register_run(_as_run(run), name, alias=alias, tracking_uri=tracking_uri)


def promote(
    name: str,
    candidate: str | int | None,
    to: str,
    *,
    data: str | Path | None = None,
    metric: str | None = None,
    margin: float = 0.0,
    force: bool = False,
    reason: str | None = None,
    rollback: bool = False,
    tracking_uri: str | None = None,
) -> Decision:
    """Move alias ``to`` of ``name`` to version ``candidate`` (a number or an alias) only if it
    is not worse than the version holding ``to`` by more than ``margin``.

    Both are scored on the same labelled rows (``data``, default the candidate run's test split,
    minus rows either trained or validated on); the paired bootstrap 95% interval of the
    difference in ``metric`` (default: the task's headline) must not reach below ``-margin``, and
    the candidate must load in a fresh process with the incumbent's input columns. ``force``
    overrides (``reason`` is recorded); ``rollback`` moves ``to`` back to its previous holder.
    ``Decision.exit_code`` is 0 when promoted, 1 when refused.
    """
    from mlsmith.registry import promote as promote_version

    return promote_version(
        name,
        candidate,
        to,
        data=data,
        metric=metric,
        margin=margin,
        force=force,
        reason=reason,
        rollback=rollback,
        tracking_uri=tracking_uri,
    )


def serve(
    models: list[str] | dict[str, str] | None = None,
    *,
    config: str | Path | dict[str, Any] | None = None,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    tracking_uri: str | None = None,
    watch: float | None = None,
    log_dir: str | Path | None = None,
    batching: bool | None = None,
    overrides: list[str] | None = None,
) -> None:
    """Serve models over HTTP (Open Inference Protocol v2 and ``POST .../predict``) until
    SIGTERM or Ctrl-C, which drain in-flight requests first.

    ``models`` are run directories, package directories or ``models:/NAME@ALIAS``, each served
    under ``name`` when given as ``"name=reference"`` (or as a dict), else under its registered
    name or run's experiment. ``config`` is a serve.yaml (A/B routes, shadow, batching, the
    prediction log); the keyword options and ``overrides`` (``key=value``) take precedence.
    """
    from mlsmith.config.serve import load_serve_config
    from mlsmith.serving.models import default_name
    from mlsmith.serving.server import serve as run_server

    named: dict[str, str] = {}
    items = models.items() if isinstance(models, dict) else [_named(m) for m in models or []]
    for name, reference in items:
        name = name or default_name(reference)
        if name in named:
            raise ConfigError(
                f"two models would be served as '{name}' ({named[name]} and {reference}); "
                f"name them: NAME=MODEL"
            )
        named[name] = reference
    settings = load_serve_config(
        config,
        overrides,
        models=named or None,
        host=host,
        port=port,
        workers=workers,
        tracking_uri=tracking_uri,
        watch=watch,
        log_dir=log_dir,
        batching=batching,
    )
    run_server(settings)


def _named(reference: str) -> tuple[str | None, str]:
    """``name=reference`` split; a bare reference has no name (``models:/`` has no ``=``)."""
    name, sep, rest = reference.partition("=")
    if sep and name and "/" not in name and not reference.startswith("models:/"):
        return name, rest
    return None, reference


def monitor(
    package: str | Path,
    log: str | Path,
    *,
    labels: str | Path | None = None,
    output: str | Path | None = None,
    tracking_uri: str | None = None,
    model: str | None = None,
    variant: str | None = None,
    last: int | None = None,
    psi_threshold: float | None = None,
    p_value: float | None = None,
    min_rows: int | None = None,
    max_metric_drop: float | None = None,
) -> MonitorResult:
    """Judge a server's prediction log (``log``, its ``log.directory``) against ``package``'s
    training statistics: PSI and a KS / chi-square test per feature and for the predictions,
    and, with ``labels`` (CSV or Parquet of ``request_id`` and ``label``), live performance
    against the package's test metrics. ``package`` is a package or run directory or
    ``models:/<name>@<alias>``; ``model`` / ``variant`` / ``last`` pick the logged rows;
    thresholds left None take :class:`~mlsmith.config.monitor.MonitorConfig`'s defaults.
    ``output`` writes the HTML report. ``result.exit_code`` is 1 on drift or degradation.
    """
    from mlsmith.monitoring import monitor as judge_log
    from mlsmith.monitoring import monitor_config

    config = monitor_config(
        psi_threshold=psi_threshold,
        p_value=p_value,
        min_rows=min_rows,
        max_metric_drop=max_metric_drop,
    )
    from mlsmith.registry import load_package as load_rows_package

    return judge_log(
        load_rows_package(package, tracking_uri=tracking_uri),
        log,
        labels=labels,
        output=output,
        config=config,
        model=model,
        variant=variant,
        last=last,
        name=str(package),
    )
