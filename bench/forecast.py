"""Forecasting accuracy on real series that a package ships: MASE side by side, same windows.

Every model forecasts the same rolling-origin backtest windows (the last ``--windows`` windows
of each data set's horizon, ``mlsmith.forecasting.windows``) and is scored by the same code
(``mlsmith.forecasting.metrics``): the four baselines mlsmith reports beside every forecast,
StatsForecast's AutoETS, AutoARIMA and AutoTheta (``model.type: ets | arima | theta``), and
mlsmith's own global models. The series come with statsmodels (a dependency of StatsForecast),
so nothing is downloaded:

* macrodata: 12 US quarterly macroeconomic series, 1959-2009 (203 quarters), horizon 8;
* co2: Mauna Loa CO2, weekly 1958-2001 averaged to months (526), horizon 12;
* elnino: monthly sea surface temperature, 1950-2010 (732 months), horizon 12;
* sunspots: yearly sunspot activity, 1700-2008 (309 years), horizon 10, no season.

    pip install -e ".[bench]" && python bench/forecast.py        # --windows 3 --resamples 1000

Every model runs through mlsmith's own backtest (``mlsmith.forecasting.backtest``), exactly as
a ``data.type: timeseries`` run does. The table gives MASE (the mean over series x windows, with
a 95% bootstrap interval over them) and the 80% intervals' coverage: StatsForecast's own
intervals, or for the others the conformal intervals from the errors of the earlier windows and
of up to 3 calibration windows before the first (so every window has them). ``lightgbm`` is
the global gradient-boosted forecaster (``model.type: lightgbm``: one model per window over
every series' history up to it, its default ``model.strategy: combined`` averaging the direct
and the recursive forecasts), ``lightgbm_direct`` and ``lightgbm_recursive`` the same with
``model.strategy: direct`` or ``recursive``; ``mlp`` the global windowed MLP trained by the
Trainer (``model.type: mlp``).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np

from mlsmith.config import load_config
from mlsmith.forecasting.backtest import backtest
from mlsmith.forecasting.baselines import BASELINES
from mlsmith.forecasting.metrics import ForecastCell, evaluate_forecasts
from mlsmith.forecasting.models import forecaster_for
from mlsmith.forecasting_pipeline import forecaster
from mlsmith.runtime.series import SeriesSet
from mlsmith.runtime.statistical import STATISTICAL_MODELS

LEVEL = 80.0


@dataclass(frozen=True)
class Dataset:
    name: str
    series: dict[str, np.ndarray]
    horizon: int
    season_length: int


def datasets() -> list[Dataset]:
    """The four data sets, as 1-D float series."""
    from statsmodels import datasets as shipped

    macro = shipped.macrodata.load_pandas().data.drop(columns=["year", "quarter"])
    co2 = shipped.co2.load_pandas().data["co2"].resample("MS").mean().interpolate()
    elnino = shipped.elnino.load_pandas().data.drop(columns="YEAR").to_numpy().ravel()
    sunspots = shipped.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
    return [
        Dataset("macrodata", {c: macro[c].to_numpy(np.float64) for c in macro}, 8, 4),
        Dataset("co2", {"co2": co2.to_numpy(np.float64)}, 12, 12),
        Dataset("elnino", {"elnino": elnino.astype(np.float64)}, 12, 12),
        Dataset("sunspots", {"sunspots": sunspots.astype(np.float64)}, 10, 1),
    ]


# lightgbm_direct, lightgbm_recursive: model.type lightgbm with model.strategy direct (every
# step at once) or recursive (one step at a time) rather than its default, combined.
MODELS = (
    *BASELINES,
    *STATISTICAL_MODELS,
    "lightgbm",
    "lightgbm_direct",
    "lightgbm_recursive",
    "mlp",
)


def backtest_cells(data: Dataset, model: str, windows: int) -> tuple[list[ForecastCell], float]:
    """``model``'s forecasts of every window, by mlsmith's own backtest (what a
    ``data.type: timeseries`` run does): intervals from StatsForecast, or conformal ones from
    the earlier (and calibration) windows' errors for the others."""
    series = SeriesSet(
        ids=list(data.series),
        times=[np.arange(len(y)) for y in data.series.values()],
        values=list(data.series.values()),
        freq=None,
        season_length=data.season_length,
    )
    if model == "mlp":  # trained by the Trainer: it needs a config (its defaults)
        config = load_config(
            {
                "data": {
                    "type": "timeseries",
                    "path": "unused.csv",
                    "target": "y",
                    "time_column": "t",
                    "horizon": data.horizon,
                },
                "model": {"type": "mlp"},
                "seed": 0,
            }
        )
        forecast, own_intervals = forecaster(config, "mlp", data.season_length)
    elif model in ("lightgbm_direct", "lightgbm_recursive"):
        settings = {"strategy": model.removeprefix("lightgbm_")}
        forecast, own_intervals = forecaster_for("lightgbm", data.season_length, settings=settings)
    else:
        forecast, own_intervals = forecaster_for(model, data.season_length)
    started = time.perf_counter()
    cells = backtest(
        series,
        forecast,
        horizon=data.horizon,
        windows=windows,
        levels=[LEVEL],
        own_intervals=own_intervals,
    )
    return cells, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--models", nargs="+", help="only these (default: every one)")
    args = parser.parse_args()
    models = list(MODELS)
    if args.models:
        unknown = sorted(set(args.models) - set(models))
        if unknown:
            parser.error(f"unknown models {unknown}; choose from {sorted(models)}")
        models = list(args.models)
    print(
        f"\nMASE (95% bootstrap interval over series x windows), last {args.windows} windows; "
        f"{LEVEL:g}% interval coverage where a model gives intervals\n"
    )
    print(
        f"| {'data set':<10} | {'model':<15} | {'MASE':>6} | {'95% interval':>15} "
        f"| {'coverage':>8} | {'seconds':>7} |"
    )
    print(f"|{'-' * 12}|{'-' * 17}|{'-' * 8}|{'-' * 17}|{'-' * 10}|{'-' * 9}|")
    summary = []
    for data in datasets():
        scores = {}
        for name in models:
            cells, seconds = backtest_cells(data, name, args.windows)
            report = evaluate_forecasts(cells, data.season_length, n_resamples=args.resamples)
            mase = report["mase"]["value"]
            low, high = report["mase"]["ci95"]  # type: ignore[misc]
            # Conformal intervals need earlier errors: a window without them has none.
            covered = [c for c in cells if c.intervals]
            coverage = (
                evaluate_forecasts(covered, data.season_length, [LEVEL], n_resamples=0)["coverage"][
                    "value"
                ]
                if covered
                else None
            )
            scores[name] = mase
            shown = f"{coverage:.2f}" if coverage is not None else "-"
            interval = f"[{low:.3f}, {high:.3f}]"
            print(
                f"| {data.name:<10} | {name:<15} | {mase:>6.3f} | {interval:>15} "
                f"| {shown:>8} | {seconds:>7.1f} |"
            )
            print(f"  {data.name} {name} done", file=sys.stderr)
        if not set(STATISTICAL_MODELS) | {"seasonal_naive", "lightgbm", "mlp"} <= set(scores):
            continue  # a partial run (--models): no summary line
        best_stat = min(STATISTICAL_MODELS, key=lambda k: scores[k])
        best_own = min(("lightgbm", "mlp"), key=lambda k: scores[k])
        ratio = scores[best_own] / scores[best_stat]
        summary.append(
            f"{data.name}: seasonal naive {scores['seasonal_naive']:.3f}, best StatsForecast "
            f"({best_stat}) {scores[best_stat]:.3f}, best mlsmith global model ({best_own}) "
            f"{scores[best_own]:.3f} ({ratio:.2f}x the best StatsForecast; goal <= 1.05x, "
            f"{'met' if ratio <= 1.05 else 'missed'}; "
            f"{'beats' if scores[best_own] < scores['seasonal_naive'] else 'does not beat'} "
            "seasonal naive)"
        )
    print()
    print("\n".join(summary))


if __name__ == "__main__":
    main()
