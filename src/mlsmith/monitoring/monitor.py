"""``mlsmith monitor``: a prediction log judged against the package's training statistics.

Reads the log, bins every feature and the predictions with the package's reference bins, judges
each (:mod:`mlsmith.monitoring.drift`), scores the answers on labels when a labels file is given
(:mod:`mlsmith.monitoring.performance`) and writes the HTML report. The exit code is what a
scheduler reads: 1 when a feature or the prediction drifted or live performance degraded.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from mlsmith.config.loading import format_validation_error
from mlsmith.config.monitor import MonitorConfig
from mlsmith.errors import ConfigError, DataError
from mlsmith.monitoring.drift import FeatureDrift, judge
from mlsmith.monitoring.logs import (
    INPUT,
    MODEL,
    OUTPUT,
    TIME,
    VARIANT,
    logged_columns,
    read_labels,
    read_prediction_log,
)
from mlsmith.monitoring.performance import Performance, live_performance
from mlsmith.runtime.drift import PREDICTION

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.runtime.package import Package


@dataclass
class MonitorResult:
    """What ``mlsmith monitor`` found; :attr:`exit_code` is its verdict."""

    package: str
    log_dir: str
    rows: int
    first: str | None
    last: str | None
    features: list[FeatureDrift]
    prediction: FeatureDrift | None
    performance: Performance | None
    config: MonitorConfig
    notes: list[str] = field(default_factory=list)
    report: Path | None = None

    @property
    def drifted_features(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    @property
    def prediction_drifted(self) -> bool:
        return self.prediction is not None and self.prediction.drifted

    @property
    def degraded(self) -> bool:
        return self.performance is not None and self.performance.degraded

    @property
    def exit_code(self) -> int:
        """1 when drift or degradation passed a threshold (retrain), else 0."""
        return int(bool(self.drifted_features) or self.prediction_drifted or self.degraded)

    @property
    def reasons(self) -> list[str]:
        """Why the exit code is 1, in words (empty when it is 0)."""
        out = [f"feature '{name}' drifted" for name in self.drifted_features]
        if self.prediction_drifted:
            out.append("the prediction distribution drifted")
        if self.degraded and self.performance is not None:
            out.append(f"live {self.performance.headline} degraded")
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``mlsmith monitor --json``)."""
        return {
            "package": self.package,
            "log": self.log_dir,
            "rows": self.rows,
            "first": self.first,
            "last": self.last,
            "exit_code": self.exit_code,
            "drifted_features": self.drifted_features,
            "prediction_drifted": self.prediction_drifted,
            "degraded": self.degraded,
            "reasons": self.reasons,
            "features": [f.to_dict() for f in self.features],
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
            "performance": None if self.performance is None else self.performance.to_dict(),
            "thresholds": self.config.model_dump(),
            "notes": self.notes,
            "report": None if self.report is None else str(self.report),
        }


def monitor_config(**values: Any) -> MonitorConfig:
    """A MonitorConfig from the given thresholds (None: the default); bad values are a
    ConfigError naming the option."""
    try:
        return MonitorConfig.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, "monitor options")) from None


def monitor(
    package: Package,
    log_dir: str | Path,
    *,
    labels: str | Path | None = None,
    output: str | Path | None = None,
    config: MonitorConfig | None = None,
    model: str | None = None,
    variant: str | None = None,
    last: int | None = None,
    name: str | None = None,
) -> MonitorResult:
    """Judge the prediction log in ``log_dir`` against ``package``'s training statistics.

    ``model`` / ``variant`` keep only the rows of one served name / variant (a log holding
    several served names needs ``model``); ``last`` only the most recent rows. ``labels``: a
    CSV or Parquet file of ``request_id`` and ``label`` (see :mod:`mlsmith.monitoring.logs`).
    ``output``: where to write the HTML report. ``name``: how the report names the package.
    """
    config = config or MonitorConfig()
    reference = package.reference
    if reference is None:
        raise DataError(
            f"{package.directory}: the package carries no training statistics (reference.json) "
            "to measure drift against; write it again with `mlsmith export RUN_DIR`"
        )
    log = _rows(read_prediction_log(log_dir), log_dir, model, variant, last)
    inputs = logged_columns(log, INPUT)
    absent = [c for c in reference.columns if c not in inputs.columns]
    if absent:
        logged = ", ".join(map(str, inputs.columns)) or "none"
        raise DataError(
            f"{log_dir}: the logged inputs ({logged}) lack the package's feature column "
            f"'{absent[0]}'; is it the log of another model?"
            + ("" if model else " Choose the served model with --model NAME")
        )
    notes: list[str] = []
    if len(log) < config.min_rows:
        notes.append(
            f"{len(log)} logged rows, fewer than min_rows={config.min_rows}: drift is not judged"
        )
    if not reference.features:
        notes.append(f"a {reference.kind} package: only the prediction distribution is compared")
    frame = inputs
    if reference.na_values:
        from mlsmith.runtime.frames import mark_missing

        frame = mark_missing(inputs[reference.columns], reference.na_values)
    features = [judge(stats, frame[stats.column], config) for stats in reference.features]
    outputs = logged_columns(log, OUTPUT)
    prediction = None
    if reference.prediction is not None and PREDICTION in outputs.columns:
        prediction = judge(reference.prediction, outputs[PREDICTION], config)
    else:
        notes.append("no prediction distribution to compare (no output.prediction logged)")
    performance = None
    if labels is not None:
        performance = live_performance(
            log, read_labels(labels), package.decoder, reference.metrics, config, labels
        )
        if performance.note:
            notes.append(performance.note)
    result = MonitorResult(
        package=name or str(package.directory),
        log_dir=str(log_dir),
        rows=len(log),
        first=_time(log[TIME].iloc[0]),
        last=_time(log[TIME].iloc[-1]),
        features=features,
        prediction=prediction,
        performance=performance,
        config=config,
        notes=notes,
    )
    if output is not None:
        from mlsmith.monitoring.report import write_report

        result.report = write_report(result, output)
    return result


def _rows(
    log: pd.DataFrame,
    log_dir: str | Path,
    model: str | None,
    variant: str | None,
    last: int | None,
) -> pd.DataFrame:
    """The rows to judge: one served model (and variant), the most recent ``last``."""
    served = sorted(log[MODEL].astype(str).unique()) if MODEL in log.columns else []
    if model is not None:
        if model not in served:
            raise DataError(
                f"{log_dir}: no logged rows of model '{model}'; the log holds {', '.join(served)}"
            )
        log = log[log[MODEL].astype(str) == model]
    elif len(served) > 1:
        raise DataError(
            f"{log_dir}: the log holds several served models ({', '.join(served)}); choose one "
            "with --model NAME"
        )
    if variant is not None:
        variants = sorted(log[VARIANT].astype(str).unique()) if VARIANT in log.columns else []
        if variant not in variants:
            raise DataError(
                f"{log_dir}: no logged rows of variant '{variant}'; variants: "
                f"{', '.join(variants) or 'none'}"
            )
        log = log[log[VARIANT].astype(str) == variant]
    if last is not None:
        if last < 1:
            raise ConfigError(f"--last: {last} is not a positive number of rows")
        log = log.tail(last)
    return log.reset_index(drop=True)


def _time(value: Any) -> str | None:
    import pandas as pd

    if value is None or pd.isna(value):
        return None
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize(dt.timezone.utc)
    return str(stamp.isoformat())
