"""Pre-flight checks: config, data, splits, model and cost, in seconds, before any real training.

``run_checks`` is ``mlsmith check`` on the data and model the pipeline built as ``train``
would: every check, the one-batch overfitting test included unless ``quick``. ``preflight`` is
the quick form ``train`` runs first; it leaves the model's weights and buffers and every global
RNG untouched, so training after it is bit-identical to training without it.

Each check is one :class:`CheckResult` row: a group, a name, a status (pass / warn / fail / skip)
and one line of detail. Thresholds are documented where they are decided, in
:mod:`mlsmith.checks.data` and :mod:`mlsmith.checks.model`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from mlsmith.config import Config
from mlsmith.errors import DataError

if TYPE_CHECKING:
    from mlsmith.data.base import PreparedData
    from mlsmith.models.base import Model

log = logging.getLogger(__name__)

Status = Literal["pass", "warn", "fail", "skip"]
Group = Literal["config", "data", "splits", "model", "cost"]

__all__ = ["CheckReport", "CheckResult", "preflight", "run_checks", "unreadable_data"]


@dataclass(frozen=True)
class CheckResult:
    """One check: its group, its name, pass/warn/fail/skip and one line saying why."""

    group: Group
    name: str
    status: Status
    detail: str


@dataclass
class CheckReport:
    """Every check's result, in the order they ran; ``quick``: no one-batch overfitting test."""

    results: list[CheckResult]
    quick: bool

    @property
    def failed(self) -> bool:
        """Whether any check failed."""
        return any(r.status == "fail" for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "fail"]

    @property
    def warnings(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "warn"]

    def counts(self) -> dict[str, int]:
        """How many checks ended in each status."""
        counts = dict.fromkeys(("pass", "warn", "fail", "skip"), 0)
        for result in self.results:
            counts[result.status] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        """``{"quick": bool, "results": [{"group", "name", "status", "detail"}, ...]}``.

        This is the shape of ``preflight.json`` in a run directory, which the reports read.
        """
        return {"quick": self.quick, "results": [asdict(r) for r in self.results]}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> CheckReport:
        """Undo :meth:`to_dict`."""
        return cls([CheckResult(**row) for row in state["results"]], bool(state["quick"]))


def run_checks(
    config: Config, data: PreparedData, model: Model, *, quick: bool = False
) -> CheckReport:
    """Every check on the data and untrained model ``train`` would build (``mlsmith check``);
    ``quick`` leaves out the one-batch overfitting test. Leaves the model untouched."""
    results = [config_result(config), data_result(data)]
    results += _all_checks(config, data, model, quick=quick)
    return CheckReport(results, quick)


def unreadable_data(config: Config, error: DataError, *, quick: bool = False) -> CheckReport:
    """The report when the data cannot be read: that failure, and every later check skipped."""
    results = [config_result(config), CheckResult("data", "data readable", "fail", str(error))]
    return CheckReport(results + _skipped("the data could not be read"), quick)


def preflight(config: Config, data: PreparedData, model: Model) -> CheckReport:
    """The quick checks (no overfitting test) on the data and model ``train`` has built.

    Works on a copy of the network; the model's weights and buffers (BatchNorm statistics
    included) and the Python, NumPy and torch RNG states are exactly as they were, so the run
    that follows is bit-identical to one without pre-flight checks.
    """
    from mlsmith.training.reproducibility import restore_rng_states, rng_states

    states = rng_states()
    try:
        results = [config_result(config), data_result(data)]
        results += _all_checks(config, data, model, quick=True)
    finally:
        restore_rng_states(states)
    return CheckReport(results, quick=True)


def config_result(config: Config) -> CheckResult:
    """The config loaded and validated (load_config raises before this otherwise)."""
    return CheckResult(
        "config",
        "config valid",
        "pass",
        f"model.type '{config.model.type}' on data.type '{config.data.type}', "
        f"task '{config.data.task}', seed {config.seed}",
    )


def data_result(data: PreparedData) -> CheckResult:
    """What was read: the source, the rows and what the data kind made of them."""
    summary = data.summary
    rows = summary.get("rows", {})
    total = sum(rows.values()) if rows else len(data.train) + len(data.val)
    unit = "images" if summary.get("task") in ("segmentation", "detection") else "rows"
    parts = [f"{summary.get('source', 'data')}: {total:,} {unit}"]
    if "numeric" in summary:
        parts.append(
            f"{len(summary['numeric'])} numeric + {len(summary['categorical'])} categorical "
            "features"
        )
    if "image_size" in summary:
        height, width = summary["image_size"]
        parts.append(f"{height}x{width}x{summary['channels']} images ({summary['cache']})")
    if "vocab_size" in summary:
        parts.append(f"vocabulary {summary['vocab_size']:,} ({summary['tokenizer']})")
    return CheckResult("data", "data readable", "pass", ", ".join(parts))


def _all_checks(
    config: Config, data: PreparedData, model: Model, *, quick: bool
) -> list[CheckResult]:
    from mlsmith.checks.data import data_checks
    from mlsmith.checks.model import model_checks

    return data_checks(config, data) + model_checks(config, data, model, quick=quick)


def _skipped(reason: str) -> list[CheckResult]:
    return [
        CheckResult("splits", "split checks", "skip", reason),
        CheckResult("model", "model checks", "skip", reason),
        CheckResult("cost", "training cost", "skip", reason),
    ]
