"""A fitted forecaster, saved and loaded: the series of a long table in, their next periods out.

A forecasting run fits its forecaster once more on every series' whole history and saves it
in a folder (``<run>/forecaster/``, which is also a forecasting package's payload):
``forecaster.json`` (the model, the table's columns, the series' frequency and season, the
interval levels, the backtest's conformal widths) and, for a global model, its file: the LightGBM
booster (``model.txt``) or the MLP exported to ONNX (``model.onnx``). StatsForecast's models are
local: :class:`SavedForecaster` fits them on each history it is given, as every backtest window
did. ``mlsmith predict``, the package's MLflow pyfunc and the server all forecast through
:meth:`SavedForecaster.predict`, so none can drift from another.

The global models' inputs are built here, once, for training and inference alike
(:func:`origin_features`, :func:`tree_rows`, :func:`network_row`): for a forecast origin, the
last ``lags`` values as changes from the value at the origin, divided by the series' scale (the
mean absolute one-step change), their rolling means and the position in the season; the models
predict the scaled change from the origin, so one model serves series of any level and unit.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .engines import OnnxEngine, import_library
from .errors import DataError
from .package import DATA_DIR, PAYLOAD_DIR
from .series import Covariates, SeriesSet, read_series
from .statistical import STATISTICAL_MODELS, SeriesForecast, statistical_forecast

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

FORECASTER_FILE = "forecaster.json"
# Global models' files in a forecaster folder.
BOOSTER_FILE = "model.txt"
NETWORK_FILE = "model.onnx"
NETWORK_INPUT = "features"


@dataclass
class ForecasterSpec:
    """What ``forecaster.json`` holds: everything but the fitted model's own file."""

    family: str  # model.type: ets | arima | theta | lightgbm | mlp
    horizon: int  # the steps the model was trained to forecast (data.horizon)
    season_length: int
    freq: str | None  # pandas' alias; None for whole-number periods
    time_column: str
    target: str
    id_column: str | None = None
    known: list[str] = field(default_factory=list)
    past: list[str] = field(default_factory=list)
    levels: list[float] = field(default_factory=list)
    # Per level ("80"), per step: the backtest's conformal widths in MASE-scale units, for
    # models without intervals of their own.
    conformal: dict[str, list[float]] = field(default_factory=dict)
    lags: int = 0  # global models: values before the origin read as features
    bags: int = 1  # the tree: boosters averaged (model.txt, model-1.txt, ...)
    # The tree: "direct" (every step at once, the step a feature), "recursive" (one step at
    # a time, each forecast read back as the last value) or "combined" (the mean of the two:
    # ``bags`` direct boosters, then ``bags`` recursive ones): the one fitted (model.strategy
    # auto records its choice).
    strategy: str = "direct"
    # The MLP's input standardisation (empty: identity).
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    @property
    def model_file(self) -> str | None:
        if self.family == "lightgbm":
            return BOOSTER_FILE
        if self.family == "mlp":
            return NETWORK_FILE
        return None

    @staticmethod
    def read(file: Path) -> ForecasterSpec:
        try:
            raw = json.loads(file.read_text())
            return ForecasterSpec(**raw)
        except FileNotFoundError:
            raise DataError(f"{file}: not found; not a saved forecaster") from None
        except (OSError, ValueError, TypeError) as exc:
            raise DataError(f"{file}: not readable ({exc})") from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


class SavedForecaster:
    """A forecaster folder loaded to forecast (see the module)."""

    def __init__(self, directory: str | Path, *, providers: list[str] | None = None) -> None:
        root = Path(directory)
        # A package folder (MLflow's format) keeps the forecaster in its payload.
        self.directory = root / DATA_DIR / PAYLOAD_DIR if (root / "MLmodel").is_file() else root
        self.spec = ForecasterSpec.read(self.directory / FORECASTER_FILE)
        family = self.spec.family
        self.boosters: list[Any] = []
        self.engine: OnnxEngine | None = None
        if family == "lightgbm":
            # The boosters themselves, on float64 rows as they were trained (the tabular engine's
            # float32 matrix could move a row across a split threshold).
            lightgbm = import_library("lightgbm", "trees", "A LightGBM forecaster")
            parts = 2 if self.spec.strategy == "combined" else 1
            self.boosters = [
                lightgbm.Booster(model_str=(self.directory / booster_file(bag)).read_text())
                for bag in range(parts * max(self.spec.bags, 1))
            ]
        elif family == "mlp":
            self.engine = OnnxEngine(self.directory / NETWORK_FILE, providers=providers)
        elif family not in STATISTICAL_MODELS:
            raise DataError(
                f"{self.directory / FORECASTER_FILE}: unknown forecaster '{family}'; this "
                "runtime forecasts with ets, arima, theta, lightgbm and mlp"
            )

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def columns(self) -> list[str]:
        """The columns a history table brings (the id column only with several series)."""
        spec = self.spec
        ids = [spec.id_column] if spec.id_column else []
        return [*ids, spec.time_column, spec.target, *spec.known, *spec.past]

    def read(self, frame: pd.DataFrame, source: str = "input") -> SeriesSet:
        """The series of a history table (rows after a series' last value may bring the known
        covariates of the periods to forecast)."""
        spec = self.spec
        return read_series(
            frame,
            time_column=spec.time_column,
            target=spec.target,
            id_column=spec.id_column,
            freq=spec.freq,
            season_length=spec.season_length,
            source=source,
            known=spec.known,
            past=spec.past,
            future=True,
        )

    def forecast(
        self,
        histories: Sequence[np.ndarray],
        steps: int,
        levels: Sequence[float] = (),
        covariates: Sequence[Covariates] | None = None,
        offsets: Sequence[int] | None = None,
    ) -> list[SeriesForecast]:
        """Each history's next ``steps`` values, with intervals at ``levels``: the statistical
        models' own, else conformal ones from the backtest (up to its horizon); ``offsets``:
        each history's season position of its first period (:func:`season_offsets`)."""
        spec = self.spec
        if spec.family in STATISTICAL_MODELS:
            return [
                statistical_forecast(
                    spec.family,
                    y,
                    steps,
                    spec.season_length,
                    levels=levels,
                    known=covariates[i].known if covariates else None,
                )
                for i, y in enumerate(histories)
            ]
        widths = {
            float(level): np.asarray(w, dtype=np.float64)
            for level, w in spec.conformal.items()
            if float(level) in {float(v) for v in levels}
        }
        if steps > spec.horizon:
            widths = {}  # the backtest measured errors up to its horizon only
        out = []
        for i, y in enumerate(histories):
            offset = offsets[i] if offsets else 0
            point = self._global(np.asarray(y, dtype=np.float64), steps, covariates, i, offset)
            out.append(
                SeriesForecast(point, conformal_intervals(point, y, widths, spec.season_length))
            )
        return out

    def _global(
        self,
        y: np.ndarray,
        steps: int,
        covariates: Sequence[Covariates] | None,
        i: int,
        offset: int,
    ) -> np.ndarray:
        """A global model's forecast; beyond its horizon, recursively from its own forecast."""
        spec = self.spec
        series = covariates[i] if covariates else None
        if series is not None:
            if steps > spec.horizon and series.past.shape[1]:
                raise DataError(
                    f"a forecast of {steps} periods from a model trained for {spec.horizon} "
                    "reads past covariates of periods not seen yet; forecast at most "
                    f"{spec.horizon} periods, or train with a larger data.horizon"
                )
            # A tree forecasts its whole horizon at a time (recursively beyond it), reading each
            # step's known covariates only for that step: past the periods asked for, what it
            # forecasts is dropped, so the last known row stands in for the rows not given (the
            # MLP reads every step's at once: predict asked for whole horizons of rows).
            extra = len(y) + math.ceil(steps / spec.horizon) * spec.horizon - len(series.known)
            if extra > 0:
                padding = np.repeat(series.known[-1:], extra, axis=0)
                series = Covariates(np.concatenate([series.known, padding]), series.past)
        if spec.family == "lightgbm":
            # Combined: the direct boosters' forecast and the recursive ones', averaged.
            parts = ("direct", "recursive") if spec.strategy == "combined" else (spec.strategy,)
            per_part = len(self.boosters) // len(parts)
            return np.asarray(
                np.mean(
                    [
                        self._tree(
                            self.boosters[k * per_part : (k + 1) * per_part],
                            part == "recursive",
                            y,
                            steps,
                            series,
                            offset,
                        )
                        for k, part in enumerate(parts)
                    ],
                    axis=0,
                )
            )
        return self._horizons(y, steps, series, offset, None)

    def _tree(
        self,
        boosters: list[Any],
        recursive: bool,
        y: np.ndarray,
        steps: int,
        series: Covariates | None,
        offset: int,
    ) -> np.ndarray:
        """The forecast of one strategy's ``boosters`` (their mean output)."""
        spec = self.spec

        def boosted(rows: np.ndarray) -> np.ndarray:
            return np.asarray(
                np.mean(
                    [b.predict(rows, num_iteration=b.current_iteration()) for b in boosters],
                    axis=0,
                )
            )

        if not recursive:
            return self._horizons(y, steps, series, offset, boosted)
        if series is not None and series.past.shape[1]:
            raise DataError(
                "a recursive forecast reads past covariates of periods not seen yet; "
                "forecast with the direct strategy to read past covariates"
            )
        return tree_forecast(
            boosted,
            y,
            lags=spec.lags,
            season_length=spec.season_length,
            steps=steps,
            recursive=True,
            covariates=series,
            offset=offset,
        )

    def _horizons(
        self,
        y: np.ndarray,
        steps: int,
        series: Covariates | None,
        offset: int,
        boosted: Callable[[np.ndarray], np.ndarray] | None,
    ) -> np.ndarray:
        """A direct forecast, a whole horizon at a time (beyond it, from its own forecast): by
        the direct tree whose mean output is ``boosted``, else by the MLP."""
        spec = self.spec
        history = y
        forecast: list[np.ndarray] = []
        while sum(len(f) for f in forecast) < steps:
            window = series
            if series is not None and len(history) > len(y):
                window = Covariates(series.known, np.zeros((len(history), 0)))
            if boosted is not None:
                values = tree_forecast(
                    boosted,
                    history,
                    lags=spec.lags,
                    season_length=spec.season_length,
                    steps=spec.horizon,
                    recursive=False,
                    covariates=window,
                    offset=offset,
                )
            else:
                assert self.engine is not None
                row, scale = network_row(
                    history,
                    spec.lags,
                    spec.season_length,
                    spec.horizon,
                    window,
                    np.asarray(spec.mean),
                    np.asarray(spec.std),
                    offset,
                )
                change = self.engine.raw({NETWORK_INPUT: row[None, :].astype(np.float32)})[0]
                values = from_changes(history, scale, np.asarray(change, dtype=np.float64))
            forecast.append(values)
            history = np.concatenate([history, values])
        return np.concatenate(forecast)[:steps]

    def _reads(self, steps: int) -> int:
        """The periods ahead whose known covariates a forecast of ``steps`` reads: the MLP
        reads a whole horizon's at once (each recursive window's too), the others only those
        of the periods they forecast."""
        if self.spec.family != "mlp":
            return steps
        return math.ceil(steps / self.spec.horizon) * self.spec.horizon

    def predict(
        self,
        frame: pd.DataFrame,
        horizon: int | None = None,
        source: str = "input",
        levels: Sequence[float] | None = None,
    ) -> pd.DataFrame:
        """The next ``horizon`` periods (default: the trained horizon) of every series of the
        history table ``frame``: ``id`` (with an id column), ``time``, ``forecast``,
        ``lo_<level>`` and ``hi_<level>``."""
        import pandas as pd

        spec = self.spec
        steps = horizon or spec.horizon
        if steps < 1:
            raise DataError(f"{source}: the horizon must be at least 1 period, got {steps}")
        chosen = spec.levels if levels is None else list(levels)
        series = self.read(frame, source)
        forecasts = self.forecast(
            series.values,
            steps,
            chosen,
            future_covariates(series, self._reads(steps), source),
            season_offsets(series),
        )
        if steps > spec.horizon and spec.family not in STATISTICAL_MODELS and chosen:
            log.warning("no conformal intervals beyond the backtest's horizon of %d", spec.horizon)
        frames = []
        for name, times, forecast in zip(series.ids, series.times, forecasts, strict=True):
            columns: dict[str, Any] = {}
            if spec.id_column is not None:
                columns["id"] = name
            columns["time"] = future_times(times, steps, series.freq)
            columns["forecast"] = forecast.point
            for level, (low, high) in forecast.intervals.items():
                columns[f"lo_{level:g}"] = low
                columns[f"hi_{level:g}"] = high
            frames.append(pd.DataFrame(columns))
        if not frames:
            return pd.DataFrame(columns=["time", "forecast"])
        return pd.concat(frames, ignore_index=True)


# --- the global models' inputs --------------------------------------------------------------


def default_lags(horizon: int, season_length: int, seasons: int = 2) -> int:
    """``seasons`` seasons of values (the MLP's two; the tree reads three), at least the
    horizon, at least 8."""
    return max(seasons * max(season_length, 1), horizon, 8)


def series_scale(y: np.ndarray) -> float:
    """The mean absolute one-step change of ``y`` (1 for a constant series)."""
    scale = float(np.mean(np.abs(np.diff(y)))) if len(y) > 1 else 0.0
    return scale if scale > 0 else 1.0


def origin_features(
    y: np.ndarray, scale: float, lags: int, season_length: int, *, cyclic: bool, offset: int = 0
) -> np.ndarray:
    """Scaled changes of the last ``lags`` values from the last one, their rolling means, the
    persistence of recent changes (:func:`persistence`) and the position in the season of the
    first period forecast, on the calendar (``offset``: the season position of the series' first
    period, :func:`season_offsets`): as an index for a tree, as its sine and cosine for a
    network (``cyclic``)."""
    season = max(season_length, 1)
    window = y[-lags:] if len(y) >= lags else np.concatenate([np.full(lags - len(y), y[0]), y])
    changes = (window - y[-1]) / scale
    means = [changes[-k:].mean() for k in (2, 4, season, lags) if k <= lags]
    at = (offset + len(y)) % season
    if cyclic:
        phase = 2 * math.pi * at / season
        position = [math.sin(phase), math.cos(phase)]
    else:
        position = [at]
    return np.concatenate([changes, means, [persistence(y, lags)], position])


def persistence(y: np.ndarray, lags: int) -> float:
    """The lag-one autocorrelation of the last ``4 * lags`` one-step changes of ``y``: near 0
    for a random walk, negative for noise around a level, positive for a smooth trend (how far
    a change persists); 0 when there are too few, or they do not vary."""
    changes = np.diff(y[-4 * lags :])
    if len(changes) < 4 or changes[1:].std() == 0 or changes[:-1].std() == 0:
        return 0.0
    r = float(np.corrcoef(changes[1:], changes[:-1])[0, 1])
    return r if np.isfinite(r) else 0.0


def step_changes(y: np.ndarray, origin: int, horizon: int, scale: float) -> np.ndarray:
    """What the global models learn for the ``horizon`` steps after ``origin``: the change
    from the value at the origin, on the series' scale, per step (step ``h``'s divided by
    ``h``), so a steady trend is one target at every step."""
    steps = np.arange(1, horizon + 1, dtype=np.float64)
    return (y[origin : origin + horizon] - y[origin - 1]) / (scale * steps)


def from_changes(y: np.ndarray, scale: float, changes: np.ndarray) -> np.ndarray:
    """The values after ``y`` that per-step scaled ``changes`` (:func:`step_changes`) stand
    for."""
    steps = np.arange(1, len(changes) + 1, dtype=np.float64)
    return y[-1] + scale * steps * changes


def booster_file(bag: int) -> str:
    """The file of the tree's ``bag``-th booster in a forecaster folder."""
    return BOOSTER_FILE if bag == 0 else f"model-{bag}.txt"


def tree_rows(
    y: np.ndarray,
    lags: int,
    season_length: int,
    horizon: int,
    covariates: Covariates | None = None,
    offset: int = 0,
) -> tuple[np.ndarray, float]:
    """The global tree's rows for the ``horizon`` steps after ``y`` (the step is a feature), and
    the scale its outputs are in."""
    scale = series_scale(y)
    features = origin_features(y, scale, lags, season_length, cyclic=False, offset=offset)
    rows = [
        np.concatenate([features, [h], covariates.extra(len(y), h) if covariates else []])
        for h in range(1, horizon + 1)
    ]
    return np.asarray(rows, dtype=np.float64), scale


def tree_forecast(
    predict: Callable[[np.ndarray], np.ndarray],
    y: np.ndarray,
    *,
    lags: int,
    season_length: int,
    steps: int,
    recursive: bool,
    covariates: Covariates | None = None,
    offset: int = 0,
) -> np.ndarray:
    """The ``steps`` values after ``y`` by a global tree whose mean output for feature rows is
    ``predict``: every step at once (direct; ``steps`` is the horizon it learned), or one step
    at a time, each forecast appended to the history the next reads (``recursive``)."""
    if not recursive:
        rows, scale = tree_rows(y, lags, season_length, steps, covariates, offset)
        return from_changes(y, scale, predict(rows))
    covariates = recursive_covariates(covariates)
    history = y
    for _ in range(steps):
        rows, scale = tree_rows(history, lags, season_length, 1, covariates, offset)
        history = np.concatenate([history, from_changes(history, scale, predict(rows))])
    return history[len(y) :]


def recursive_covariates(covariates: Covariates | None) -> Covariates | None:
    """``covariates`` for a recursive forecast, which reads a row per forecast period as if it
    had been seen: the known ones as they are, and no past ones (a ``ValueError``: their values
    ahead are not known), so the empty past columns stretch over every period."""
    if covariates is None:
        return None
    if covariates.past.shape[1]:
        raise ValueError("a recursive forecast cannot read past covariates of the periods ahead")
    return Covariates(covariates.known, np.zeros((len(covariates.known), 0)))


def network_row(
    y: np.ndarray,
    lags: int,
    season_length: int,
    horizon: int,
    covariates: Covariates | None,
    mean: np.ndarray,
    std: np.ndarray,
    offset: int = 0,
) -> tuple[np.ndarray, float]:
    """The global MLP's input for the ``horizon`` steps after ``y`` (standardised with
    ``mean`` and ``std`` when given), and the scale its outputs are in."""
    scale = series_scale(y)
    row = origin_features(y, scale, lags, season_length, cyclic=True, offset=offset)
    if covariates is not None:
        row = np.concatenate([row, covariates.window(len(y), horizon)])
    if len(mean):
        row = (row - mean) / std
    return row, scale


# --- intervals, covariates and times of a forecast ------------------------------------------


def mase_scale(history: np.ndarray, season_length: int) -> float:
    """The in-sample MAE of the seasonal naive forecast (NaN when it is 0 or undefined)."""
    history = np.asarray(history, dtype=np.float64)
    m = season_length if len(history) > season_length else 1
    if len(history) <= m:
        return math.nan
    scale = float(np.mean(np.abs(history[m:] - history[:-m])))
    return scale if scale > 0 else math.nan


def conformal_intervals(
    point: np.ndarray,
    history: np.ndarray,
    widths: dict[float, np.ndarray],
    season_length: int,
) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """``point`` plus or minus each level's widths, on ``history``'s own scale."""
    scale = mase_scale(history, season_length)
    if not widths or not math.isfinite(scale):
        return {}
    return {
        level: (point - width[: len(point)] * scale, point + width[: len(point)] * scale)
        for level, width in widths.items()
    }


def future_covariates(
    series: SeriesSet, steps: int, source: str = "input"
) -> list[Covariates] | None:
    """Each series' covariates for a forecast of ``steps`` periods after its history: the
    known ones of those periods come from the rows after its last value."""
    if series.known is None or series.past is None or series.future_known is None:
        return None
    covariates = []
    for name, known, past, future in zip(
        series.ids, series.known, series.past, series.future_known, strict=True
    ):
        if known.shape[1] and len(future) < steps:
            raise DataError(
                f"{source}: series '{name}': the forecast reads the known covariates of the "
                f"{steps} periods after its last value, and the history brings {len(future)}; "
                "add the rows of the periods to forecast, with the covariates and an empty target"
            )
        covariates.append(Covariates(np.concatenate([known, future[:steps]]), past))
    return covariates


def season_offsets(series: SeriesSet) -> list[int]:
    """Each series' position in the season at its first period, on one calendar for every
    series (periods counted from 1970-01-01, or from period 0 for whole-number times), so the
    global models' season feature means the same month (day, hour...) in every series however
    ragged their starts."""
    season = max(series.season_length, 1)
    if season == 1:
        return [0] * len(series)
    return [period_number(times[0], series.freq) % season for times in series.times]


def period_number(time: Any, freq: str | None) -> int:
    """``time``'s number of periods of ``freq`` since the first period on or after 1970-01-01
    (negative before it); a whole-number time is its own number."""
    import pandas as pd
    from pandas.tseries.frequencies import to_offset

    if freq is None:
        return int(time)
    offset = to_offset(freq)
    stamp = pd.Timestamp(time)
    anchor = offset.rollforward(pd.Timestamp("1970-01-01"))
    if isinstance(offset, pd.offsets.Tick):
        return int((stamp - anchor) // pd.Timedelta(offset))
    if stamp >= anchor:
        return len(pd.date_range(anchor, stamp, freq=offset)) - 1
    return -(len(pd.date_range(stamp, anchor, freq=offset)) - 1)


def future_times(times: np.ndarray, steps: int, freq: str | None) -> np.ndarray:
    """The ``steps`` periods after ``times``' last one."""
    import pandas as pd

    if freq is None:
        return np.arange(int(times[-1]) + 1, int(times[-1]) + 1 + steps)
    return pd.date_range(start=times[-1], periods=steps + 1, freq=freq)[1:].to_numpy()
