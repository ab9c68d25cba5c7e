"""A forecasting run (``data.type: timeseries``): backtest, record, and forecast the future.

``mlsmith train`` on a time-series config reads the series, backtests the configured
forecaster and the four baselines on the same rolling-origin windows, and writes a run
directory like every other run's (``config.yaml``, ``run.json``, ``metrics.json``, MLflow):

* ``metrics.json``: ``test`` (the last window) and ``val`` (the windows before it), each with
  MASE, sMAPE, MAE, RMSE, WQL and interval coverage and their 95% bootstrap intervals over
  series x windows; ``baselines``: the same for naive, seasonal naive, drift and window
  average;
* ``backtest.json``: per-series metrics and the error by horizon step, of the model and of
  each baseline, on the test window;
* ``forecasts.csv``: every backtest forecast of the model (series, window, time, truth,
  forecast, interval bounds);
* ``forecaster/``: the model fitted once more on every series' whole history
  (:func:`save_forecaster`), with the backtest's conformal widths for a model without intervals
  of its own; ``package/``: that forecaster in MLflow's format (:mod:`mlsmith.packaging.forecast`).

``mlsmith predict RUN --horizon H [--input HISTORY]`` (:func:`forecast_future`) forecasts with
the saved forecaster from the end of the history (the training table unless another is given):
``id`` (with several series), ``time``, ``forecast``, ``lo_<level>`` and ``hi_<level>`` of the
next ``H`` periods of every series.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.config import Config
from mlsmith.errors import DataError
from mlsmith.files import write_json, write_text
from mlsmith.run import (
    BASELINES_KEY,
    CONFIG_FILE,
    INFO_FILE,
    METRICS_FILE,
    Run,
    capture_environment,
    check_output_dir,
    new_run_dir,
    record_stopped,
    write_lock,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

    from mlsmith.forecasting.metrics import ForecastCell
    from mlsmith.forecasting.models import ForecastFn
    from mlsmith.runtime.forecaster import ForecasterSpec
    from mlsmith.runtime.series import Covariates, SeriesSet
    from mlsmith.runtime.statistical import SeriesForecast
    from mlsmith.tracking import Tracker

log = logging.getLogger(__name__)

BACKTEST_FILE = "backtest.json"
FORECASTS_FILE = "forecasts.csv"
# The forecaster fitted on every series' whole history: what predict and the package run.
FORECASTER_DIR = "forecaster"
# Series the MLP's ONNX export is checked on against the network.
CHECK_SERIES = 20


def run_forecasting(cfg: Config) -> Run:
    """Backtest ``cfg``'s forecaster and the baselines, and write the run (see the module)."""
    from mlsmith.data.timeseries import load_series, series_config
    from mlsmith.forecasting.backtest import conformal_widths
    from mlsmith.forecasting.baselines import BASELINES
    from mlsmith.reports import write_reports_safely
    from mlsmith.runtime.series import too_short
    from mlsmith.tracking import Tracker, run_tags

    check_output_dir(cfg.output_dir)
    data = series_config(cfg)
    series, fingerprint = load_series(cfg)
    step = data.step or data.horizon
    short = too_short(series, data.horizon, data.windows, step)
    if short:
        raise DataError(
            f"{data.path}: {len(short)} series are too short for {data.windows} backtest "
            f"window(s) of {data.horizon} steps (step {step}) and a season of history: "
            f"{', '.join(short[:5])}; lower data.windows or data.horizon, or leave them out"
        )
    log.info(
        "%d series of %d to %d periods, frequency %s, season length %d; %d window(s) of %d",
        len(series),
        min(series.lengths),
        max(series.lengths),
        series.freq or "whole-number periods",
        series.season_length,
        data.windows,
        data.horizon,
    )
    run_dir = new_run_dir(cfg)
    info: dict[str, Any] = {
        "id": run_dir.name,
        "experiment": cfg.experiment,
        "status": "running",
        "started": time.time(),
        "data_fingerprint": fingerprint,
        "data": _summary(cfg, series),
    }
    tracker: Tracker | None = None
    try:
        environment = capture_environment("cpu", cfg)
        info["environment"] = environment
        write_text(run_dir / CONFIG_FILE, cfg.to_yaml())
        write_lock(run_dir, "cpu")
        write_json(run_dir / INFO_FILE, info)
        tracker = Tracker(cfg.track, output_dir=cfg.output_dir, experiment=cfg.experiment)
        info["mlflow_run_id"] = tracker.start(
            run_name=run_dir.name,
            params=cfg.flat(),
            tags=run_tags(run_dir, fingerprint, environment),
            run_dir=run_dir,
            config_yaml=cfg.to_yaml(),
        )
        info["tracking_uri"] = tracker.uri if tracker.active else None
        write_json(run_dir / INFO_FILE, info)
        started = time.perf_counter()
        cells = _backtest(cfg, series, cfg.model.type)
        info["backtest_seconds"] = round(time.perf_counter() - started, 3)
        baselines = {name: _backtest(cfg, series, name) for name in BASELINES}
        metrics = {
            **_scored(cfg, series, cells),
            BASELINES_KEY: {name: _scored(cfg, series, c) for name, c in baselines.items()},
        }
        write_json(run_dir / METRICS_FILE, metrics)
        write_json(run_dir / BACKTEST_FILE, _details(series, {cfg.model.type: cells, **baselines}))
        write_text(run_dir / FORECASTS_FILE, _forecast_rows(series, cells, data.levels))
        widths = conformal_widths(cells, data.levels, data.horizon, series.season_length)
        started = time.perf_counter()
        save_forecaster(cfg, series, widths, run_dir / FORECASTER_DIR)
        info["final_fit_seconds"] = round(time.perf_counter() - started, 3)
        info.update(status="finished", finished=time.time())
        write_json(run_dir / INFO_FILE, info)
    except BaseException as error:
        interrupted = record_stopped(run_dir, info, error, tracker.run_id if tracker else None)
        if tracker is not None:
            tracker.finish("KILLED" if interrupted else "FAILED")
        raise
    # The forecasts and metrics are complete and recorded: a stop from here on leaves a
    # finished run without its reports or MLflow artifacts, never an unfinished one.
    with tracker.closing_complete_run(run_dir):
        if cfg.export.package:
            info["package"] = write_package(run_dir, cfg, tracker)
            write_json(run_dir / INFO_FILE, info)
        reports = write_reports_safely(run_dir) if cfg.eval.report else []
        tracker.log_metrics(_flat(metrics))
        tracker.log_artifacts(
            [run_dir / f for f in (CONFIG_FILE, METRICS_FILE, BACKTEST_FILE, FORECASTS_FILE)]
            + reports
        )
    return Run(run_dir)


def write_package(
    run_dir: Path,
    cfg: Config,
    tracker: Tracker | None,
    output: Path | None = None,
    *,
    strict: bool = False,
) -> dict[str, Any]:
    """The run's package (``<run>/package/``, or ``output``), logged as its MLflow model when
    written in place; what run.json says about it. A failure is a warning (the run is complete,
    and ``mlsmith export`` can try again), or with ``strict`` the error itself."""
    from mlsmith.data.timeseries import read_frame
    from mlsmith.errors import MlsmithError
    from mlsmith.packaging.forecast import write_forecast_package
    from mlsmith.packaging.writer import PACKAGE_DIR

    target = output or run_dir / PACKAGE_DIR
    try:
        export = write_forecast_package(
            run_dir / FORECASTER_DIR, read_frame(cfg), target, run_name=run_dir.name
        )
    except Exception as error:  # the forecaster is saved; a package must never cost the run
        if strict:
            raise
        what = str(error) if isinstance(error, MlsmithError) else f"{type(error).__name__}: {error}"
        log.warning("no package written (%s); retry with `mlsmith export %s`", what, run_dir)
        return {"status": "failed", "error": what}
    record: dict[str, Any] = {
        "status": "written",
        "path": target.name,
        "serves": export["serves"],
        "max_abs_diff": export["package_check"]["max_abs_diff"],
    }
    model_id = tracker.log_package(target) if tracker is not None and output is None else None
    if model_id:
        record["mlflow_model_id"] = model_id
    log.info("package: %s (forecasts with %s)", target, export["serves"])
    return record


def export_run(run: Run, output: str | Path | None = None) -> dict[str, Any]:
    """Write (again) a finished forecasting run's package (``mlsmith export``); returns its
    ``export.json``. Written in its place, it is logged to the run's MLflow run."""
    from mlsmith.errors import RunError
    from mlsmith.files import read_json
    from mlsmith.packaging.writer import PACKAGE_DIR
    from mlsmith.runtime.package import DATA_DIR, EXPORT_FILE, PAYLOAD_DIR
    from mlsmith.tracking import Tracker

    if run.info.get("status") not in (None, "finished"):
        raise RunError(
            f"{run.path}: the run is {run.info.get('status')}, not finished; export packages "
            "a finished run's forecaster"
        )
    target = run.path / PACKAGE_DIR if output is None else Path(output)
    in_place = target.resolve() == (run.path / PACKAGE_DIR).resolve()
    tracker = Tracker.reopen(run.config, run.info.get("mlflow_run_id")) if in_place else None
    record = write_package(run.path, run.config, tracker, None if in_place else target, strict=True)
    if in_place:
        info = run.info
        info["package"] = record
        write_json(run.path / INFO_FILE, info)
    export: dict[str, Any] = read_json(target / DATA_DIR / PAYLOAD_DIR / EXPORT_FILE)
    return export


def forecast_future(
    run: Run, horizon: int | None = None, history: str | None = None
) -> pd.DataFrame:
    """The next ``horizon`` periods (default: the run's ``data.horizon``) of every series of
    ``history`` (default: the run's training table), by the run's saved forecaster."""
    from mlsmith.data.timeseries import read_frame, series_config
    from mlsmith.runtime.forecaster import SavedForecaster

    folder = run.path / FORECASTER_DIR
    if not (folder / "forecaster.json").is_file():
        raise DataError(
            f"{run.path}: no saved forecaster ({FORECASTER_DIR}/); the run is "
            f"{run.info.get('status', 'unfinished')} or older than mlsmith's forecast packages: "
            "train it again"
        )
    saved = SavedForecaster(folder)
    source = history or series_config(run.config).path
    return saved.predict(read_frame(run.config, history), horizon, source=source)


def save_forecaster(
    cfg: Config, series: SeriesSet, widths: dict[float, np.ndarray], target: Path
) -> None:
    """Fit ``cfg``'s forecaster on every series' whole history and save it (with the backtest's
    conformal ``widths``) as the folder ``target``, whole or not at all. A global model is
    fitted here once more, on all the data; a statistical one is fitted at forecast time."""
    import os
    import shutil

    from mlsmith.data.timeseries import series_config
    from mlsmith.files import fsync_directory, temporary_path
    from mlsmith.runtime.forecaster import FORECASTER_FILE, ForecasterSpec, default_lags

    data = series_config(cfg)
    model = cfg.model.type
    spec = ForecasterSpec(
        family=model,
        horizon=data.horizon,
        season_length=series.season_length,
        freq=series.freq,
        time_column=data.time_column,
        target=data.target,
        id_column=data.id_column,
        known=list(data.known_covariates),
        past=list(data.past_covariates),
        levels=list(data.levels),
        conformal={f"{level:g}": w.tolist() for level, w in widths.items()},
        lags=default_lags(data.horizon, series.season_length),
    )
    folder = temporary_path(target)
    folder.mkdir()
    try:
        _fit_and_save(cfg, series, spec, folder)
        write_text(folder / FORECASTER_FILE, spec.to_json())
        os.replace(folder, target)
        fsync_directory(target.parent)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _fit_and_save(cfg: Config, series: SeriesSet, spec: ForecasterSpec, folder: Path) -> None:
    """A global model fitted on every whole history, its file in ``folder`` (``spec`` gets its
    lags and input standardisation); nothing for a statistical model."""
    import tempfile

    from mlsmith.data.timeseries import series_config
    from mlsmith.runtime.forecaster import season_offsets
    from mlsmith.runtime.series import Covariates

    data = series_config(cfg)
    model = spec.family
    offsets = season_offsets(series)
    covariates = None
    if series.known is not None and series.past is not None:
        covariates = [Covariates(k, p) for k, p in zip(series.known, series.past, strict=True)]
    if model == "lightgbm":
        from mlsmith.forecasting.global_trees import GlobalTreeForecaster

        tree = GlobalTreeForecaster(data.horizon, series.season_length, seed=cfg.seed)
        for key, value in _settings(cfg).items():
            setattr(tree, key, value)
        tree.fit(series.values, covariates, offsets).save(folder)
        # auto's choice, made on the whole histories' last horizons, is what the package runs.
        spec.lags, spec.bags, spec.strategy = tree.n_lags, tree.bags, tree.chosen
        log.info("tree forecaster: %s strategy (validation %s)", tree.chosen, tree.validation)
    elif model == "mlp":
        from mlsmith.models.forecast_mlp import GlobalMLPForecaster

        with tempfile.TemporaryDirectory(prefix="mlsmith-forecast-") as scratch:
            network = GlobalMLPForecaster(cfg, data.horizon, series.season_length, Path(scratch))
            network.fit(series.values, covariates, offsets)
        from mlsmith.packaging.formats import to_onnx
        from mlsmith.runtime.engines import OnnxEngine
        from mlsmith.runtime.forecaster import NETWORK_FILE, NETWORK_INPUT, network_row

        rows = (
            np.stack(
                [
                    network_row(
                        y,
                        network.lags,
                        series.season_length,
                        data.horizon,
                        None,
                        network.mean,
                        network.std,
                        offset,
                    )[0]
                    for y, offset in zip(
                        series.values[:CHECK_SERIES], offsets[:CHECK_SERIES], strict=True
                    )
                ]
            ).astype(np.float32)
            if covariates is None
            else None
        )
        example = {NETWORK_INPUT: np.zeros((2, len(network.mean)), dtype=np.float32)}
        graph = network.inference_graph()
        to_onnx(graph, example, folder / NETWORK_FILE)
        if rows is not None:
            import torch

            with torch.inference_mode():
                expected = graph(torch.from_numpy(rows)).numpy()
            got = OnnxEngine(folder / NETWORK_FILE, providers=["CPUExecutionProvider"]).raw(
                {NETWORK_INPUT: rows}
            )
            diff = float(np.abs(got - expected).max())
            if diff > 1e-4:
                raise RuntimeError(f"the MLP's ONNX export differs from it by {diff:.3g}")
            log.info("MLP forecaster exported to ONNX: max |difference| %.2g", diff)
        spec.lags = network.lags
        spec.mean, spec.std = network.mean.tolist(), network.std.tolist()


# --- helpers ----------------------------------------------------------------------------------


def _backtest(cfg: Config, series: SeriesSet, model: str) -> list[ForecastCell]:
    from mlsmith.data.timeseries import series_config
    from mlsmith.forecasting.backtest import backtest

    data = series_config(cfg)
    forecast, own_intervals = forecaster(cfg, model, series.season_length)
    return backtest(
        series,
        forecast,
        horizon=data.horizon,
        windows=data.windows,
        step=data.step,
        levels=data.levels,
        own_intervals=own_intervals,
    )


def forecaster(cfg: Config, model: str, season_length: int) -> tuple[ForecastFn, bool]:
    """``model`` (the config's ``model.type`` or a baseline's name) ready to forecast; the
    network trains through the Trainer, in a scratch folder for its checkpoints."""
    from mlsmith.forecasting.models import forecaster_for

    if model != "mlp":
        settings = _settings(cfg) if model == cfg.model.type else None
        return forecaster_for(model, season_length, settings=settings, seed=cfg.seed)

    def forecast(
        histories: Sequence[np.ndarray],
        horizon: int,
        levels: Sequence[float],
        covariates: Sequence[Covariates] | None = None,
        offsets: Sequence[int] | None = None,
    ) -> list[SeriesForecast]:
        import tempfile

        from mlsmith.models.forecast_mlp import GlobalMLPForecaster
        from mlsmith.runtime.statistical import SeriesForecast

        with tempfile.TemporaryDirectory(prefix="mlsmith-forecast-") as scratch:
            network = GlobalMLPForecaster(cfg, horizon, season_length, Path(scratch))
            network.fit(histories, covariates, offsets)
        return [
            SeriesForecast(
                network.predict(
                    y, covariates[i] if covariates else None, offsets[i] if offsets else 0
                )
            )
            for i, y in enumerate(histories)
        ]

    return forecast, False


def _settings(cfg: Config) -> dict[str, Any]:
    """The global tree model's settings from ``model`` (a time-series config's LightGBM
    defaults are the forecaster's, see mlsmith.config.experiment)."""
    from mlsmith.forecasting.models import TREE_SETTINGS

    if cfg.model.type != "lightgbm":
        return {}
    return {k: getattr(cfg.model, k) for k in TREE_SETTINGS}


def _scored(cfg: Config, series: SeriesSet, cells: list[ForecastCell]) -> dict[str, Any]:
    """``test`` (the last window) and ``val`` (the others) metrics of ``cells``."""
    from mlsmith.data.timeseries import series_config
    from mlsmith.forecasting.metrics import evaluate_forecasts

    data = series_config(cfg)
    last = data.windows - 1
    splits = {"test": [c for c in cells if c.window == last]}
    if data.windows > 1:
        splits["val"] = [c for c in cells if c.window < last]
    scored = {}
    for split, chosen in splits.items():
        levels = data.levels if all(c.intervals for c in chosen) else []
        scored[split] = evaluate_forecasts(
            chosen,
            series.season_length,
            levels,
            n_resamples=cfg.eval.bootstrap,
            confidence=cfg.eval.confidence,
            seed=cfg.seed,
        )
    return scored


def _details(series: SeriesSet, by_model: dict[str, list[ForecastCell]]) -> dict[str, Any]:
    """Per series and per horizon step, on the test window, for every model."""
    from mlsmith.forecasting.metrics import error_by_step, per_series

    details: dict[str, Any] = {}
    for model, cells in by_model.items():
        last = max(c.window for c in cells)
        test = [c for c in cells if c.window == last]
        details[model] = {
            "per_series": per_series(test, series.season_length),
            "error_by_step": error_by_step(test),
        }
    return details


def _forecast_rows(series: SeriesSet, cells: list[ForecastCell], levels: list[float]) -> str:
    import pandas as pd

    times = dict(zip(series.ids, series.times, strict=True))
    frames = []
    for cell in cells:
        start = len(cell.history)
        columns: dict[str, Any] = {
            "id": cell.series,
            "window": cell.window,
            "time": times[cell.series][start : start + len(cell.truth)],
            "truth": cell.truth,
            "forecast": cell.point,
        }
        for level in levels:
            if level in cell.intervals:
                columns[f"lo_{level:g}"], columns[f"hi_{level:g}"] = cell.intervals[level]
        frames.append(pd.DataFrame(columns))
    return pd.concat(frames, ignore_index=True).to_csv(index=False)


def _summary(cfg: Config, series: SeriesSet) -> dict[str, Any]:
    from mlsmith.data.timeseries import series_config

    data = series_config(cfg)
    return {
        "source": data.path,
        "task": "forecast",
        "series": len(series),
        "periods": {"min": min(series.lengths), "max": max(series.lengths)},
        "freq": series.freq,
        "season_length": series.season_length,
        "horizon": data.horizon,
        "windows": data.windows,
        "step": data.step or data.horizon,
    }


def _flat(metrics: dict[str, Any]) -> dict[str, float]:
    """``test/mase``, ``val/wql``... for MLflow (finite values only)."""
    flat = {}
    for split in ("test", "val"):
        for name, entry in (metrics.get(split) or {}).items():
            value = entry.get("value")
            if isinstance(value, float) and np.isfinite(value):
                flat[f"{split}/{name}"] = value
    return flat


def write_forecasts(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` to ``path`` (.csv, .tsv or .parquet), whole or not at all."""
    from mlsmith.data.tables import SUFFIXES
    from mlsmith.files import atomic_path

    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unsupported output type '{path.suffix}'; use .csv or .parquet")
    with atomic_path(path) as tmp:
        if fmt == "csv":
            frame.to_csv(tmp, sep="\t" if path.suffix.lower() == ".tsv" else ",", index=False)
        else:
            frame.to_parquet(tmp, index=False)
