"""``reference.json``: the training split's statistics every package carries for drift.

Computed when the package is written, from a seeded sample of the training split's raw rows
and the package's own predictions on them (what the server will answer, int8 or pruned
included), plus the run's held-out metrics, which live performance is compared with. See
:mod:`mlsmith.runtime.drift` for what the statistics are; a package without them still loads
and serves, only drift cannot be measured against it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsmith.errors import MlsmithError
from mlsmith.files import read_json, write_json
from mlsmith.runtime.drift import REFERENCE_FILE, Reference
from mlsmith.runtime.package import Package
from mlsmith.runtime.tabular import TableEncoder

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.data.base import PreparedData

log = logging.getLogger(__name__)

# Training rows summarised, per data kind: deciles and category shares settle well before
# 10,000 rows; texts and images cost a prediction each (images a decode too).
REFERENCE_ROWS = {"tabular": 10_000, "text": 2_000, "image": 256}
SOURCE = "training split"
METRICS_FILE = "metrics.json"


def reference_rows(data: PreparedData) -> pd.DataFrame | None:
    """A seeded sample of the training split's raw rows (None without a training frame)."""
    frame = data.frames.get("train")
    if frame is None or not len(frame):
        return None
    limit = REFERENCE_ROWS.get(data.preprocessor.kind, REFERENCE_ROWS["tabular"])
    sample = frame.sample(n=min(limit, len(frame)), random_state=0)
    return sample.sort_index().reset_index(drop=True)


def fit_reference(
    package: Package, frame: pd.DataFrame, metrics: dict[str, Any] | None = None
) -> Reference:
    """The reference statistics of raw training rows ``frame`` for ``package``: tabular
    packages per feature, text packages the text's length, every package its predictions."""
    predictions = package.predict(frame, SOURCE)
    inner = package.encoder.inner
    classes = package.classes if package.decoder.kind != "regression" else []
    if isinstance(inner, TableEncoder):
        return Reference.fit(
            frame,
            predictions,
            kind=package.kind,
            numeric=inner.numeric,
            categorical=inner.categorical,
            na_values=inner.na_values,
            classes=classes,
            metrics=metrics,
        )
    text = package.columns if package.kind == "text" else []
    return Reference.fit(
        frame, predictions, kind=package.kind, text=text, classes=classes, metrics=metrics
    )


def held_out_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's test metrics (else validation's) as ``{"split": ..., "metrics": {...}}``."""
    file = Path(run_dir) / METRICS_FILE
    if not file.is_file():
        return {}
    recorded = read_json(file)
    for split in ("test", "val"):
        if isinstance(recorded, dict) and isinstance(recorded.get(split), dict):
            return {"split": split, "metrics": recorded[split]}
    return {}


def write_reference(payload: Path, frame: pd.DataFrame, run_dir: Path | None = None) -> bool:
    """Write ``reference.json`` into the package payload ``payload`` (which already holds the
    model); True when written. A failure is a warning, never a lost package: the package
    serves without it, and only drift monitoring needs it."""
    try:
        package = Package(payload, providers=["CPUExecutionProvider"])
        metrics = held_out_metrics(run_dir) if run_dir is not None else {}
        reference = fit_reference(package, frame, metrics)
        write_json(payload / REFERENCE_FILE, reference.to_dict())
    except Exception as error:  # statistics for monitoring must never cost the user the package
        what = str(error) if isinstance(error, MlsmithError) else f"{type(error).__name__}: {error}"
        log.warning("the package carries no drift reference (%s)", what)
        return False
    return True
