"""A forecasting run's report: ``report.html`` and ``REPORT.md`` from its own files.

What a person needs to judge a forecast: the backtest metrics with their intervals, the model
against its baselines on the same windows, the error by horizon step, the series with the worst
and best MASE, and plots of a sample of series (their recent history, the backtest forecasts and
intervals against the truth). Everything is read from the run directory (``metrics.json``,
``backtest.json``, ``forecasts.csv``, ``run.json``); no data or model is needed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.config import Config, load_config
from mlsmith.reports.plots import figure, legend, to_png
from mlsmith.reports.runinfo import NOT_RECORDED, format_ci, format_number, format_time

if TYPE_CHECKING:
    import pandas as pd

# Series plotted at most (the worst ones by MASE first: where a reader should look).
PLOTTED_SERIES = 6
# Periods of history shown before the first backtest window.
HISTORY_SHOWN = 36
# Rows of the per-series table.
SERIES_ROWS = 10


@dataclass(frozen=True)
class ForecastRecord:
    """What the report shows, read from the run directory (missing files: empty)."""

    path: Path
    config: Config
    info: dict[str, Any]
    metrics: dict[str, Any]
    details: dict[str, Any]
    forecasts: pd.DataFrame | None
    history: pd.DataFrame | None  # the training table, when still readable

    @property
    def model(self) -> str:
        return self.config.model.type


def is_forecasting_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a forecasting run (its config is a time-series one)."""
    config = Path(run_dir) / "config.yaml"
    return config.is_file() and load_config(config).data.type == "timeseries"


def load_forecast_record(run_dir: Path) -> ForecastRecord:
    """The run's files, as far as they exist."""
    import pandas as pd

    path = Path(run_dir)
    config = load_config(path / "config.yaml")

    def read(name: str) -> dict[str, Any]:
        file = path / name
        return dict(json.loads(file.read_text())) if file.is_file() else {}

    file = path / "forecasts.csv"
    forecasts = pd.read_csv(file) if file.is_file() else None
    history = None
    try:
        from mlsmith.data.timeseries import read_frame

        history = read_frame(config)
    except Exception:  # the data may have moved since: the plots then show the windows only
        history = None
    return ForecastRecord(
        path=path,
        config=config,
        info=read("run.json"),
        metrics=read("metrics.json"),
        details=read("backtest.json"),
        forecasts=forecasts,
        history=history,
    )


# --- content shared by both formats ---------------------------------------------------------


def metric_rows(record: ForecastRecord) -> list[tuple[str, str, str, str]]:
    """(split, metric, value, interval) of the model."""
    return [
        (split, name, format_number(entry.get("value")), format_ci(entry))
        for split in ("test", "val")
        for name, entry in (record.metrics.get(split) or {}).items()
    ]


def baseline_rows(record: ForecastRecord) -> tuple[list[str], list[list[str]]]:
    """The model and every baseline on the test window: headers and rows."""
    rows = {f"{record.model} (model)": record.metrics.get("test") or {}}
    for name, by_split in (record.metrics.get("baselines") or {}).items():
        rows[name] = by_split.get("test") or {}
    names = ["mase", "smape", "mae", "rmse", "wql", "coverage"]
    table = [
        [who, *(format_number((metrics.get(n) or {}).get("value")) for n in names)]
        for who, metrics in rows.items()
    ]
    return ["forecaster", *names], table


def series_rows(record: ForecastRecord) -> list[list[str]]:
    """The series with the worst MASE on the test window, then the best, with their metrics."""
    per_series = (record.details.get(record.model) or {}).get("per_series") or {}
    ranked = sorted(
        per_series.items(),
        key=lambda item: -item[1]["mase"] if _finite(item[1].get("mase")) else math.inf,
    )
    shown = (
        ranked
        if len(ranked) <= SERIES_ROWS
        else ranked[: SERIES_ROWS // 2] + ranked[-(SERIES_ROWS // 2) :]
    )
    return [
        [name, *(format_number(m.get(k)) for k in ("mase", "smape", "mae", "rmse"))]
        for name, m in shown
    ]


def summary_line(record: ForecastRecord) -> str:
    data = record.info.get("data") or {}
    if not data:
        return f"Data: {NOT_RECORDED}."
    return (
        f"{data.get('series')} series of {data.get('periods', {}).get('min')} to "
        f"{data.get('periods', {}).get('max')} periods (frequency {data.get('freq') or 'periods'}"
        f", season length {data.get('season_length')}); {data.get('windows')} backtest windows "
        f"of {data.get('horizon')} steps, step {data.get('step')}: the last is the test split."
    )


def verdict(record: ForecastRecord) -> str:
    """One sentence: the model's test MASE against the seasonal naive forecast's."""
    model = ((record.metrics.get("test") or {}).get("mase") or {}).get("value")
    naive = (
        (((record.metrics.get("baselines") or {}).get("seasonal_naive") or {}).get("test") or {})
        .get("mase", {})
        .get("value")
    )
    if not (_finite(model) and _finite(naive)):
        return "The model's and the seasonal naive forecast's MASE are not both recorded."
    better = "beats" if model < naive else "does not beat"
    return (
        f"On the test window the model {better} the seasonal naive forecast: MASE "
        f"{format_number(model)} vs {format_number(naive)} (below 1: better than the naive "
        "forecast's in-sample error)."
    )


# --- plots ------------------------------------------------------------------------------------


def error_by_step_plot(record: ForecastRecord) -> bytes | None:
    """The test window's mean absolute error at each horizon step, model vs baselines."""
    lines = {
        name: (details or {}).get("error_by_step") or [] for name, details in record.details.items()
    }
    if not any(lines.values()):
        return None
    with figure() as fig:
        ax = fig.add_subplot()
        for i, (name, values) in enumerate(lines.items()):
            steps = np.arange(1, len(values) + 1)
            style = {"linewidth": 2.2, "color": "C0"} if name == record.model else {"alpha": 0.7}
            ax.plot(steps, values, marker="o", label=name, **({"color": f"C{i}"} | style))
        ax.set_title("Error by horizon step (test window)")
        ax.set_xlabel("steps after the origin")
        ax.set_ylabel("mean absolute error")
        legend(ax, loc="upper left")
        return to_png(fig)


def series_plot(record: ForecastRecord, series: str) -> bytes | None:
    """One series: recent history, the backtest forecasts with intervals, and the truth."""
    import pandas as pd

    if record.forecasts is None:
        return None
    cells = record.forecasts[record.forecasts["id"].astype(str) == series]
    if cells.empty:
        return None
    data = record.config.data
    with figure() as fig:
        ax = fig.add_subplot()
        first = pd.to_datetime(cells["time"]).min() if _dates(cells) else cells["time"].min()
        if record.history is not None:
            rows = record.history
            id_column = getattr(data, "id_column", None)
            if id_column is not None:
                rows = rows[rows[id_column].astype(str) == series]
            time_column = getattr(data, "time_column", "")
            times = pd.to_datetime(rows[time_column]) if _dates(cells) else rows[time_column]
            order = np.argsort(times.to_numpy())
            times, values = times.to_numpy()[order], rows[data.target].to_numpy()[order]
            keep = times < first
            ax.plot(
                times[keep][-HISTORY_SHOWN:],
                values[keep][-HISTORY_SHOWN:],
                color="0.4",
                label="history",
            )
        lows = [c for c in cells.columns if c.startswith("lo_")]
        for window, part in cells.groupby("window"):
            t = pd.to_datetime(part["time"]) if _dates(cells) else part["time"]
            ax.plot(
                t, part["truth"], color="0.1", linewidth=1.2, label="truth" if window == 0 else None
            )
            ax.plot(
                t,
                part["forecast"],
                color="C0",
                marker="o",
                markersize=3,
                label="forecast" if window == 0 else None,
            )
            if lows:
                level = lows[0][3:]
                ax.fill_between(
                    t,
                    part[lows[0]],
                    part[f"hi_{level}"],
                    color="C0",
                    alpha=0.18,
                    label=f"{level}% interval" if window == 0 else None,
                )
        ax.set_title(f"Series {series}: backtest windows")
        ax.set_ylabel(data.target)
        legend(ax, loc="upper left")
        return to_png(fig)


def plotted_series(record: ForecastRecord) -> list[str]:
    """The series to plot: the worst by test MASE first, at most :data:`PLOTTED_SERIES`."""
    per_series = (record.details.get(record.model) or {}).get("per_series") or {}
    ranked = sorted(
        per_series,
        key=lambda s: -per_series[s]["mase"] if _finite(per_series[s].get("mase")) else 0.0,
    )
    return ranked[:PLOTTED_SERIES]


# --- the two formats --------------------------------------------------------------------------


def render_forecast_html(record: ForecastRecord) -> str:
    """``report.html`` of a forecasting run."""
    from mlsmith.reports.html import CSS, Plot, figures, html_table

    plots = [Plot("Error by horizon step", error_by_step_plot(record), wide=False)]
    plots += [Plot(f"Series {s}", series_plot(record, s)) for s in plotted_series(record)]
    headers, rows = baseline_rows(record)
    sections = [
        ("Summary", f"<p>{escape(summary_line(record))}</p><p>{escape(verdict(record))}</p>"),
        (
            "Metrics with confidence intervals",
            html_table(["split", "metric", "value", "95% CI"], metric_rows(record), numeric=(2, 3)),
        ),
        (
            "Model vs baselines (test window)",
            html_table(headers, rows, numeric=tuple(range(1, len(headers)))),
        ),
        ("Plots", figures(plots)),
        (
            "Series, worst and best by MASE (test window)",
            html_table(
                ["series", "mase", "smape", "mae", "rmse"],
                series_rows(record),
                numeric=(1, 2, 3, 4),
            ),
        ),
        ("Configuration", f"<pre>{escape(record.config.to_yaml())}</pre>"),
    ]
    body = "\n".join(f"<section><h2>{escape(t)}</h2>\n{c}</section>" for t, c in sections)
    title = f"{record.config.experiment} / {record.path.name}"
    status = str(record.info.get("status", NOT_RECORDED))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)} - mlsmith report</title><style>{CSS}</style></head>\n"
        f'<body><main><h1>{escape(title)}</h1><p class="sub">{escape(status)} &middot; '
        f"forecast &middot; model {escape(record.model)} &middot; started "
        f"{escape(format_time(record.info.get('started')))}</p>\n{body}\n"
        '<p class="sub">Written by mlsmith report.</p></main></body></html>\n'
    )


def render_forecast_markdown(record: ForecastRecord) -> str:
    """``REPORT.md`` of a forecasting run."""
    from mlsmith.reports.markdown import table

    headers, rows = baseline_rows(record)
    return "\n".join(
        [
            f"# Forecasting report: {record.config.experiment} / {record.path.name}",
            "",
            f"Status **{record.info.get('status', NOT_RECORDED)}** · model `{record.model}` · "
            f"plots in `report.html`.",
            "",
            summary_line(record),
            "",
            verdict(record),
            "",
            "## Metrics",
            "",
            table(["split", "metric", "value", "95% CI"], metric_rows(record), align="llrr"),
            "",
            "Intervals are 95% percentile-bootstrap intervals over series x windows.",
            "",
            "## Model vs baselines (test window)",
            "",
            table(headers, rows, align="l" + "r" * (len(headers) - 1)),
            "",
            "## Series, worst and best by MASE (test window)",
            "",
            table(["series", "mase", "smape", "mae", "rmse"], series_rows(record), align="lrrrr"),
            "",
        ]
    )


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _dates(cells: pd.DataFrame) -> bool:
    """Whether the forecasts' times are dates (else whole-number periods)."""
    import pandas as pd

    return not pd.api.types.is_integer_dtype(cells["time"])
