"""What a study leaves: its trials as records, the best one, ``best.yaml`` and the report.

``<output_dir>/<experiment>/tune-<study>/`` holds ``best.yaml`` (a complete config that
reproduces the best trial with ``mlsmith train``) and ``tune_report.html``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mlsmith.config import Config, TuneConfig
from mlsmith.files import write_text
from mlsmith.tuning.space import best_config, decode_params
from mlsmith.tuning.trial_queue import ERROR_ATTR, STALE_ERROR, is_requeued

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

BEST_FILE = "best.yaml"
REPORT_FILE = "tune_report.html"
# An attempt that was interrupted or lost its process: FAIL in Optuna, re-queued by mlsmith, and
# counted apart from the trials that make up the budget.
INTERRUPTED = "INTERRUPTED"
STATES = ("COMPLETE", "PRUNED", "FAIL", INTERRUPTED, "RUNNING", "WAITING")


@dataclass
class TrialRecord:
    """One trial as the table and the report show it.

    ``state`` is Optuna's, except INTERRUPTED for a re-queued attempt (Optuna's FAIL).
    """

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    error: str | None = None
    run_dir: str | None = None


@dataclass
class TuneResult:
    """What a study found: its best trial, files and every trial.

    ``counts`` has every state of ``STATES``; all but INTERRUPTED make up the budget.
    """

    study: str
    storage: str
    direction: str
    metric: str
    folder: Path
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    best_config: Path | None
    report: Path | None
    counts: dict[str, int]
    trials: list[TrialRecord] = field(default_factory=list)

    def top(self, n: int = 10) -> list[TrialRecord]:
        """Finished trials best first, then the rest by number."""
        sign = 1.0 if self.direction == "minimize" else -1.0
        scored = sorted(
            (t for t in self.trials if t.state == "COMPLETE" and t.value is not None),
            key=lambda t: sign * (t.value or 0.0),
        )
        others = [t for t in self.trials if t not in scored]
        return (scored + others)[:n]


def study_folder(cfg: Config, study: str) -> Path:
    """Where the study's outputs go: ``<output_dir>/<experiment>/tune-<study>``."""
    return Path(cfg.output_dir) / cfg.experiment / f"tune-{study}"


def trial_records(study: optuna.Study, tune: TuneConfig) -> list[TrialRecord]:
    """Every trial of the study, by number."""
    records = []
    for t in study.get_trials(deepcopy=False):
        requeued = is_requeued(t)
        records.append(
            TrialRecord(
                number=t.number,
                state=INTERRUPTED if requeued else t.state.name,
                value=t.value if t.state.name == "COMPLETE" else None,
                params=decode_params(tune.space, t.params),
                error=t.user_attrs.get(ERROR_ATTR) or (STALE_ERROR if requeued else None),
                run_dir=t.user_attrs.get("run_dir"),
            )
        )
    return records


def best_record(records: list[TrialRecord], direction: str) -> TrialRecord | None:
    """The best COMPLETE trial; None before any."""
    complete = [r for r in records if r.state == "COMPLETE" and r.value is not None]
    if not complete:
        return None
    pick = min if direction == "minimize" else max
    return pick(complete, key=lambda r: r.value or 0.0)


def build_result(
    study: optuna.Study,
    tune: TuneConfig,
    *,
    url: str,
    direction: str,
    folder: Path,
    best_path: Path | None = None,
    report_path: Path | None = None,
) -> TuneResult:
    """The study as a TuneResult, naming the files written for it (if any)."""
    records = trial_records(study, tune)
    best = best_record(records, direction)
    return TuneResult(
        study=study.study_name,
        storage=url,
        direction=direction,
        metric=tune.metric,
        folder=folder,
        best_value=best.value if best else None,
        best_params=best.params if best else {},
        best_trial=best.number if best else None,
        best_config=best_path,
        report=report_path,
        counts={state: sum(r.state == state for r in records) for state in STATES},
        trials=records,
    )


def write_outputs(
    study: optuna.Study, cfg: Config, tune: TuneConfig, folder: Path, direction: str
) -> tuple[Path | None, Path | None]:
    """Write ``best.yaml`` (once a trial completed) and the report; their paths."""
    from mlsmith.reports.tuning import render_tune_report

    records = trial_records(study, tune)
    best = best_record(records, direction)
    best_path = None
    if best is not None:
        best_path = folder / BEST_FILE
        header = (
            f"# Best trial {best.number} of study '{study.study_name}': "
            f"{tune.metric} = {best.value:.6g}\n"
        )
        text = yaml.safe_dump(best_config(cfg, best.params).to_dict(), sort_keys=False)
        write_text(best_path, header + text)
    report_path = folder / REPORT_FILE
    write_text(
        report_path,
        render_tune_report(
            study.study_name,
            tune.metric,
            direction,
            records,
            param_importances(study),
            frozenset(k for k, p in tune.space.items() if getattr(p, "log", False)),
        ),
    )
    return best_path, report_path


def param_importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances of the params; empty with fewer than 2 complete trials."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError) as error:  # e.g. every trial had the same params
        log.info("no parameter importances: %s", error)
        return {}


def read_best(path: Path) -> dict[str, Any]:
    """``best.yaml`` as a dict (for tests and tools)."""
    loaded = yaml.safe_load(path.read_text())
    return loaded if isinstance(loaded, dict) else {}
