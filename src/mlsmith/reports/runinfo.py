"""Everything a report reads from a run directory, loaded once and tolerant of missing files.

Older runs, interrupted runs and runs without a test split lack some files; every field here is
then ``None`` (or empty) and the writers print "not recorded" instead of failing. Only a
directory without ``config.yaml`` is an error, because then it is not a run directory at all.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsmith.config import Config
from mlsmith.errors import RunError
from mlsmith.run import (
    CONFIG_FILE,
    CONFUSION_FILE,
    CV_METRICS_KEY,
    INFO_FILE,
    METRICS_FILE,
    PREFLIGHT_FILE,
    TEST_PREDICTIONS_FILE,
    Run,
    split_metrics,
)
from mlsmith.training.history import HISTORY_FILE, STEPS_FILE

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

PREPROCESSING_FILE = "preprocessing.json"
PROFILE_FILE = "profile/profile.json"  # train.profile's summary (mlsmith.training.profiling)
HTML_REPORT = "report.html"
MARKDOWN_REPORT = "REPORT.md"
MODEL_CARD = "MODEL_CARD.md"
REPORT_FILES = (HTML_REPORT, MARKDOWN_REPORT, MODEL_CARD)
NOT_RECORDED = "not recorded"
# Checkpoint entries that are buffers (BatchNorm statistics), not learned parameters.
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


@dataclass
class RunRecord:
    """The files of one run directory, parsed; a missing or unreadable file is ``None``."""

    path: Path
    config: Config
    config_yaml: str
    info: dict[str, Any]
    history: pd.DataFrame | None
    steps: pd.DataFrame | None
    metrics: dict[str, dict[str, Any]]
    confusion: dict[str, Any]
    predictions: pd.DataFrame | None
    preflight: dict[str, Any] | None
    preprocessing: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    artifacts: list[tuple[str, int]] = field(default_factory=list)
    # metrics.json's other top-level keys: baseline, majority, vs_baseline
    sections: dict[str, Any] = field(default_factory=dict)
    # metrics.json's cross-validation block (eval.cv): {"held_out": {metric: {mean, ...}}}.
    cv: dict[str, Any] = field(default_factory=dict)
    # importance.json: permutation importance on the validation split (and the trees' gain).
    importance: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def task(self) -> str | None:
        """``binary``, ``multiclass``, ``regression``, ``ranking`` or None when nothing recorded
        it."""
        task = (self.info.get("data") or {}).get("task") or self._fitted_task.get("kind")
        if task:
            return str(task)
        if self.config.data.task != "auto":
            return self.config.data.task
        if self.predictions is not None:
            has_proba = any(c.startswith("proba_") for c in self.predictions.columns)
            return "classification" if has_proba else "regression"
        return None

    @property
    def is_classification(self) -> bool:
        return self.task in ("binary", "multiclass", "classification")

    @property
    def classes(self) -> list[str]:
        """Class labels in model output order: from the predictions, the confusion file or the
        fitted preprocessing, whichever the run has."""
        if self.predictions is not None:
            proba = [c[len("proba_") :] for c in self.predictions.columns if c.startswith("proba_")]
            if proba:
                return proba
        for entry in self.confusion.values():
            return [str(label) for label in entry.get("labels", [])]
        return [str(label) for label in self._fitted_task.get("classes") or []]

    @property
    def _fitted_task(self) -> dict[str, Any]:
        """The task the preprocessing recorded (kind and classes), or {}."""
        task = (self.preprocessing or {}).get("task")
        return task if isinstance(task, dict) else {}

    @property
    def headline_split(self) -> str | None:
        """The split whose metrics summarise the run: test when scored, else val."""
        for split in ("test", "val"):
            if self.metrics.get(split):
                return split
        return next(iter(self.metrics), None)

    @property
    def best_epoch(self) -> int | None:
        best = self.info.get("best_epoch")
        return int(best) if isinstance(best, (int, float)) else None

    @property
    def monitor(self) -> str:
        return self.config.train.checkpoint.monitor

    @property
    def ci_level(self) -> str:
        """'95%', or the level eval.confidence asked for (the metrics key is "ci95" anyway)."""
        return f"{100 * self.config.eval.confidence:g}%"

    @property
    def ci_label(self) -> str:
        return f"{self.ci_level} CI"

    def history_column(self, name: str) -> pd.Series | None:
        """A history column with at least one finite value, else None."""
        if self.history is None or name not in self.history.columns:
            return None
        column = self.history[name]
        return column if column.notna().any() else None

    def val_metric_columns(self) -> list[str]:
        """``val/<metric>`` history columns other than the loss, in recorded order."""
        if self.history is None:
            return []
        return [
            c
            for c in self.history.columns
            if c.startswith("val/") and c != "val/loss" and self.history[c].notna().any()
        ]


def load_record(run_dir: str | Path) -> RunRecord:
    """Read a run directory; raises :class:`RunError` when it is not one."""
    run = Run(run_dir)  # checks the directory and config.yaml, loads the validated config
    path = run.path
    recorded = _read_json(path / METRICS_FILE) or {}
    return RunRecord(
        path=path,
        config=run.config,
        config_yaml=(path / CONFIG_FILE).read_text(),
        info=_read_json(path / INFO_FILE) or {},
        history=_read_csv(path / HISTORY_FILE),
        steps=_read_csv(path / STEPS_FILE),
        metrics=split_metrics(recorded),
        sections={k: v for k, v in recorded.items() if k not in split_metrics(recorded)},
        confusion=_read_json(path / CONFUSION_FILE) or {},
        predictions=_read_predictions(path / TEST_PREDICTIONS_FILE),
        preflight=_read_json(path / PREFLIGHT_FILE),
        preprocessing=_read_json(path / PREPROCESSING_FILE),
        profile=_read_json(path / PROFILE_FILE),
        artifacts=list_artifacts(path),
        cv=recorded.get(CV_METRICS_KEY) or {},
        importance=_read_json(path / "importance.json"),
    )


def list_artifacts(run_dir: Path) -> list[tuple[str, int]]:
    """(relative path, bytes) of every file in the run directory but the reports themselves.

    Hidden files (an atomic write's temporary file) are left out.
    """
    files = []
    for file in sorted(run_dir.rglob("*")):
        relative = file.relative_to(run_dir)
        if not file.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        if relative.as_posix() in REPORT_FILES:
            continue
        files.append((relative.as_posix(), file.stat().st_size))
    return files


def count_parameters(run_dir: Path) -> int | None:
    """Learned parameters in ``checkpoints/best.pt`` (buffers excluded); None without it."""
    checkpoint = run_dir / "checkpoints" / "best.pt"
    if not checkpoint.is_file():
        return None
    from mlsmith.training.checkpoint import load_checkpoint

    try:
        state = load_checkpoint(checkpoint).get("model")
    except RunError as error:
        log.warning("cannot count parameters: %s", error)
        return None
    if not isinstance(state, dict):
        return None
    return sum(
        int(tensor.numel())
        for name, tensor in state.items()
        if hasattr(tensor, "numel") and not name.endswith(_BUFFER_SUFFIXES)
    )


# --- formatting shared by the writers --------------------------------------------------------


def format_number(value: Any) -> str:
    """A metric value for people: 4 decimals, thousands separators for large numbers."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    if abs(value) >= 0.001:
        return f"{value:.4f}"
    return f"{value:.3g}"


def format_ci(entry: dict[str, Any] | None) -> str:
    """``[low, high]`` of a metrics.json entry, or "-" when it has no interval."""
    low, high = (entry or {}).get("ci95") or (None, None)
    if low is None or high is None:
        return "-"
    return f"[{format_number(low)}, {format_number(high)}]"


def format_bytes(size: int) -> str:
    """``512 B``, ``5.6 KB``, ``1.2 MB``..."""
    if size < 1024:
        return f"{size:,} B"
    scaled = float(size)
    for unit in ("KB", "MB", "GB"):
        scaled /= 1024
        if scaled < 1024 or unit == "GB":
            break
    return f"{scaled:,.1f} {unit}"


def format_seconds(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return NOT_RECORDED
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)} min {rest:.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes)} min"


def format_time(epoch_seconds: Any) -> str:
    if not isinstance(epoch_seconds, (int, float)):
        return NOT_RECORDED
    stamp = dt.datetime.fromtimestamp(epoch_seconds, tz=dt.timezone.utc)
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")


def format_value(value: Any) -> str:
    """A config or summary value on one line (lists and dicts as compact JSON)."""
    if isinstance(value, bool):
        return "true" if value else "false"  # as YAML writes it
    if isinstance(value, float):
        return f"{value:g}"  # 0.001 and 3e-05 as written in a config, not 0.0010
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(", ", ": "))
    if value is None:
        return "none"
    return str(value)


# --- readers ----------------------------------------------------------------------------------


def _read_json(file: Path) -> Any:
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as error:
        log.warning("%s is unreadable (%s); the report leaves it out", file.name, error)
        return None


def _read_csv(file: Path, **kwargs: Any) -> pd.DataFrame | None:
    import pandas as pd

    if not file.is_file():
        return None
    try:
        frame = pd.read_csv(file, **kwargs)
    except (OSError, ValueError) as error:  # pandas' EmptyDataError/ParserError are ValueErrors
        log.warning("%s is unreadable (%s); the report leaves it out", file.name, error)
        return None
    return frame if len(frame) else None


def _read_predictions(file: Path) -> pd.DataFrame | None:
    # Labels stay text ("1" and "01" are different classes; "NA" is a class name, not a gap).
    frame = _read_csv(file, dtype={"target": str, "prediction": str}, keep_default_na=False)
    if frame is not None and {"query", "target", "score", "rank"} <= set(frame.columns):
        import pandas as pd

        # A ranking's: query ids stay text, the rest are numbers.
        for column in ("target", "score", "rank"):
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
        return frame
    if frame is None or not {"target", "prediction"} <= set(frame.columns):
        return None
    if not any(c.startswith("proba_") for c in frame.columns):
        # Regression: the values are numbers after all.
        import pandas as pd

        for column in ("target", "prediction"):
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame
