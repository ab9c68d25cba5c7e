"""The promotion gate: an alias (``champion``, ``production``...) moves to a candidate version
only when the candidate is not measurably worse than the version holding it.

The figures count only when the candidate loads with ``mlflow.pyfunc`` in a fresh process (as a
server would load it; that runs while this process scores) and reads the same raw input columns
as the incumbent. Both are scored on the same held-out rows (:mod:`mlsmith.registry.comparison`)
and the alias moves when the lower bound of the paired 95% interval of the difference is at least
``-margin``. Every decision is
written on the candidate version as ``mlsmith.promotion.<alias>.*`` tags: the figures, the checks,
the reason, and (when the alias moves) the version that held it before, which is what
``--rollback`` reads.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlsmith.errors import ConfigError, RunError
from mlsmith.registry.comparison import Contender, Figures, compare, load_contender
from mlsmith.registry.store import (
    NO_VERSION,
    alias_holder,
    check_alias,
    connect,
    mlflow_errors,
    promotion_tag,
    record_tags,
    require_registered_model,
    resolve_tracking_uri,
    resolve_version,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

# Seconds the fresh process may take to import MLflow and load the candidate.
LOAD_TIMEOUT_S = 300
LOAD_SCRIPT = "import sys, mlflow.pyfunc; mlflow.pyfunc.load_model(sys.argv[1])"


@dataclass(frozen=True)
class Check:
    """A check the candidate must pass before its figures count."""

    name: str
    passed: bool
    detail: str


@dataclass
class Decision:
    """What ``promote`` decided and the figures it decided on (also tags on the version).

    ``figures.difference`` is candidate minus incumbent with its sign set so that positive means
    the candidate is better (for a loss or an error: incumbent minus candidate).
    """

    name: str
    alias: str
    candidate: str  # the version considered (for a rollback: the one the alias went back to)
    incumbent: str | None  # the version that held the alias when asked
    tracking_uri: str
    margin: float = 0.0
    promoted: bool = False
    forced: bool = False
    rollback: bool = False
    reason: str = ""
    checks: list[Check] = field(default_factory=list)
    figures: Figures | None = None

    @property
    def exit_code(self) -> int:
        """0 when the alias now points at the candidate, 1 when it was refused."""
        return 0 if self.promoted else 1

    @property
    def outcome(self) -> str:
        """promoted, refused, forced (promoted over a refusal) or rolled back."""
        if self.rollback:
            return "rolled back"
        if self.forced:
            return "forced"
        return "promoted" if self.promoted else "refused"

    @property
    def holder(self) -> str | None:
        """The version the alias points at after the decision."""
        return self.candidate if self.promoted else self.incumbent


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
    """Point alias ``to`` of ``name`` at ``candidate`` (a version number or an alias) when it is
    not worse than the version holding ``to`` by more than ``margin`` (see the module docstring).

    ``data`` (default: the candidate run's test split) are the labelled rows both are scored on;
    ``metric`` defaults to the task's headline. ``force`` moves the alias whatever the outcome,
    recording ``reason``; ``rollback`` moves it back to the version that held it before.
    """
    if margin < 0:
        raise ConfigError(f"--margin must be >= 0, got {margin:g}")
    if reason and not force:
        raise ConfigError("--reason goes with --force: it records why the gate was overridden")
    check_alias(to)
    uri = resolve_tracking_uri(tracking_uri)
    client = connect(uri)
    require_registered_model(client, name, uri)
    if rollback:
        return _rollback(client, name, to, uri)
    if candidate is None or str(candidate) == "":
        raise ConfigError("promote: name the candidate with --candidate ALIAS|VERSION")
    chosen = resolve_version(client, name, str(candidate))
    holder = alias_holder(client, name, to)
    decision = Decision(
        name=name,
        alias=to,
        candidate=str(chosen.version),
        incumbent=str(holder.version) if holder else None,
        tracking_uri=uri,
        margin=margin,
    )
    if decision.incumbent == decision.candidate:
        decision.promoted = True
        decision.reason = f"version {decision.candidate} already holds '{to}'"
        return decision
    with (
        tempfile.TemporaryDirectory(prefix="mlsmith-promote-") as scratch,
        _FreshLoad(uri, f"models:/{name}/{chosen.version}") as loading,
    ):
        new = load_contender(client, uri, name, chosen, Path(scratch) / "candidate")
        if holder is not None:
            old = load_contender(client, uri, name, holder, Path(scratch) / "incumbent")
            inputs = _same_inputs(new, old)
            if inputs.passed:
                decision.figures = compare(new, old, data=data, metric=metric)
            decision.checks.append(inputs)
        decision.checks.insert(0, loading.result())
    _decide(decision, force=force, reason=reason)
    with mlflow_errors(f"'{name}' version {decision.candidate}: alias '{to}'"):
        # Recorded first: an alias that moved without its previous holder written down could
        # not be rolled back.
        record_tags(client, name, decision.candidate, to, _decision_tags(decision, reason))
        if decision.promoted:
            client.set_registered_model_alias(name, to, decision.candidate)
    return decision


def _decide(decision: Decision, *, force: bool, reason: str | None) -> None:
    """Set ``promoted`` and ``reason`` from the checks and the figures; ``force`` overrides."""
    failed = [check for check in decision.checks if not check.passed]
    figures = decision.figures
    if failed:
        decision.reason = "; ".join(check.detail for check in failed)
    elif figures is None:
        decision.promoted = True
        decision.reason = f"no version held '{decision.alias}': promoted after the load check"
    else:
        low, high = figures.ci95
        decision.promoted = low >= -decision.margin
        summary = (
            f"{figures.metric} difference {figures.difference:+.4g}, 95% CI "
            f"[{low:+.4g}, {high:+.4g}], margin {decision.margin:g}"
        )
        decision.reason = (
            f"not worse than version {decision.incumbent}: {summary}"
            if decision.promoted
            else f"may be worse than version {decision.incumbent} (the interval's lower bound "
            f"is below -margin): {summary}"
        )
    if force and not decision.promoted:
        decision.promoted = decision.forced = True
        decision.reason = f"forced ({reason or 'forced'}) over: {decision.reason}"


def _rollback(client: MlflowClient, name: str, alias: str, uri: str) -> Decision:
    """Point ``alias`` back at the version that held it before its current holder."""
    current = alias_holder(client, name, alias)
    if current is None:
        raise RunError(f"no version of '{name}' holds '{alias}': nothing to roll back")
    previous = current.tags.get(promotion_tag(alias, "previous_version"), NO_VERSION)
    if previous == NO_VERSION:
        raise RunError(
            f"version {current.version} of '{name}' holds '{alias}' but no version held it "
            f"before (none was recorded); point the alias yourself with `mlsmith promote {name} "
            f"--candidate VERSION --to {alias} --force`"
        )
    resolve_version(client, name, previous)  # it may have been deleted since
    with mlflow_errors(f"'{name}': alias '{alias}'"):
        client.set_registered_model_alias(name, alias, previous)
        record_tags(
            client,
            name,
            str(current.version),
            alias,
            {"rolled_back_to": previous, "rolled_back_at": _now()},
        )
    return Decision(
        name=name,
        alias=alias,
        candidate=previous,
        incumbent=str(current.version),
        tracking_uri=uri,
        promoted=True,
        rollback=True,
        reason=f"rolled back from version {current.version} to {previous}, its previous holder",
    )


class _FreshLoad:
    """Loads the candidate with ``mlflow.pyfunc`` in a new interpreter, as a server would, while
    this process scores the versions: a package that only loads where it was trained (a missing
    file, code imported from the training environment) fails here, not in production."""

    def __init__(self, uri: str, model_uri: str) -> None:
        self.model_uri = model_uri
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
        self.process = subprocess.Popen(
            [sys.executable, "-c", LOAD_SCRIPT, model_uri],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def __enter__(self) -> _FreshLoad:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Scoring failed (or was interrupted) before the result was read: stop the loader.
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()

    def result(self) -> Check:
        try:
            _, stderr = self.process.communicate(timeout=LOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return Check("loads", False, f"{self.model_uri} did not load in {LOAD_TIMEOUT_S} s")
        if self.process.returncode != 0:
            lines = stderr.strip().splitlines() or [f"exit status {self.process.returncode}"]
            detail = f"{self.model_uri} does not load in a fresh process: {lines[-1]}"
            return Check("loads", False, detail)
        return Check("loads", True, "loads with mlflow.pyfunc in a fresh process")


def _same_inputs(candidate: Contender, incumbent: Contender) -> Check:
    """The candidate must read the raw columns the incumbent's callers send."""
    new, old = set(candidate.inputs), set(incumbent.inputs)
    if new == old:
        return Check("inputs", True, f"the incumbent's {len(new)} input columns")
    parts = []
    if new - old:
        parts.append(f"also needs {', '.join(sorted(new - old))}")
    if old - new:
        parts.append(f"no longer reads {', '.join(sorted(old - new))}")
    detail = "its input columns differ from the incumbent's: " + "; ".join(parts)
    return Check("inputs", False, detail)


def _decision_tags(decision: Decision, reason: str | None) -> dict[str, str]:
    """The decision as tags: outcome, reason, checks, figures, and the previous holder of the
    alias when it moves."""
    tags = {
        "decision": decision.outcome,
        "reason": decision.reason,
        "incumbent_version": decision.incumbent or NO_VERSION,
        "margin": repr(decision.margin),
        "checks": "; ".join(f"{c.name}: {'ok' if c.passed else c.detail}" for c in decision.checks),
        "at": _now(),
    }
    if decision.promoted:
        tags["previous_version"] = decision.incumbent or NO_VERSION
    if reason:
        tags["force_reason"] = reason
    figures = decision.figures
    if figures is not None:
        tags |= {
            "metric": figures.metric,
            "candidate_value": repr(figures.candidate),
            "incumbent_value": repr(figures.incumbent),
            "difference": repr(figures.difference),
            "ci95_low": repr(figures.ci95[0]),
            "ci95_high": repr(figures.ci95[1]),
            "rows": str(figures.rows),
            "rows_excluded": str(figures.rows_excluded),
            "data": figures.source,
        }
    return tags


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
