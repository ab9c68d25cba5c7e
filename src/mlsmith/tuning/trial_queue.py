"""The trial queue: a study's exact budget as WAITING trials, each claimed by one process.

The leading process tops the queue up to the budget; every worker runs only trials it claims
from the queue, so none is lost or run twice. A trial counts toward the budget once it finishes
for its own reasons: COMPLETE, PRUNED, or FAIL because of its config or a NaN. An attempt stopped
from outside is FAIL too (it did fail) but is re-queued: one interrupted by Ctrl-C or SIGTERM is
marked so before it fails, and one whose process died is failed for its stale heartbeat; the
next top-up queues a fresh trial in its place.

What counts is read from the trials themselves, not kept in a counter, so a top-up also repairs
whatever a process killed half-way through left behind. Top-ups and claims hold the storage
lock: two leaders starting at the same instant queue the budget once.
"""

from __future__ import annotations

import json
import warnings
from typing import TYPE_CHECKING, Any

from mlsmith.tuning.storage import GRACE_S, StudyStorage

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

# User attributes of a trial: why it failed (every ordinary failure records one), and whether it
# was an interrupted attempt whose place went to a fresh trial.
ERROR_ATTR = "error"
REQUEUED_ATTR = "requeued"
STALE_ERROR = f"its process stopped (no heartbeat for {GRACE_S} s); re-queued"


def is_requeued(trial: FrozenTrial) -> bool:
    """Whether ``trial`` is a failed attempt that does not count toward the budget.

    Interrupted attempts are marked before they fail; a trial failed for its stale heartbeat is
    the only FAIL without an error, since every ordinary failure records one first.
    """
    from optuna.trial import TrialState

    return trial.state == TrialState.FAIL and (
        bool(trial.user_attrs.get(REQUEUED_ATTR)) or ERROR_ATTR not in trial.user_attrs
    )


def queue_budget(
    store: StudyStorage,
    study: optuna.Study,
    budget: int,
    points: list[dict[str, Any]] | None = None,
) -> int:
    """Fail the study's stale trials, then queue fresh ones until ``budget`` trials count;
    with ``points`` (a grid), each queued trial is the next point no counted trial holds.

    Returns how many were queued (none when the study already holds its budget).
    """
    import optuna

    with store.lock():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        counted = [t for t in study.get_trials(deepcopy=False) if not is_requeued(t)]
        missing = max(budget - len(counted), 0)
        if points is None:
            for _ in range(missing):
                study.enqueue_trial({})
            return missing
        taken = {_point_key(t.system_attrs.get("fixed_params") or t.params) for t in counted}
        fresh = [p for p in points if _point_key(p) not in taken][:missing]
        for point in fresh:
            study.enqueue_trial(point)
    return len(fresh)


def _point_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def claim_waiting_trial(store: StudyStorage, study_name: str) -> int | None:
    """Claim one WAITING trial of the study for this process; its trial id, or None when the
    queue is empty. The claimed trial is RUNNING, with a first heartbeat.

    Optuna's claim, ``set_trial_state_values(RUNNING)`` returning False for a trial that is no
    longer WAITING, is atomic on PostgreSQL (the row is read FOR UPDATE) but not on SQLite, where
    two processes can both win one trial: claims hold the storage lock. The heartbeat comes
    first, so a process killed right after claiming still leaves a trial that goes stale.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = store.backend
    with store.lock():
        study_id = storage.get_study_id_from_name(study_name)
        for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
            try:
                if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    return trial_id
            except UpdateFinishedTrialError:  # finished by another process since it was read
                continue
    return None


def trial_for(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """The Trial of a trial this process claimed: what samples, reports and is told.

    The one private use of Optuna here. Its public way to run a queued trial, ``Study.ask()``,
    creates a new trial when the queue is empty (another process may have just taken the last
    one), so the budget would not be exact; ``ask()`` itself pops the queue and builds the
    Trial this way, with a constructor Optuna documents as not for direct use.
    tests/tuning/test_trial_queue.py fails, naming the behaviour, if this stops working.
    """
    import optuna

    return optuna.Trial(study, trial_id)


def requeue_interrupted(storage: optuna.storages.BaseStorage, trial_id: int, reason: str) -> bool:
    """Mark a claimed trial that was interrupted FAIL, as an attempt to re-queue; False when it
    had already finished (the signal came after it was told)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    if storage.get_trial(trial_id).state != TrialState.RUNNING:
        return False
    try:
        # The mark before the error: a process killed in between leaves an attempt that still
        # reads as interrupted when its heartbeat goes stale.
        storage.set_trial_user_attr(trial_id, REQUEUED_ATTR, True)
        storage.set_trial_user_attr(trial_id, ERROR_ATTR, f"{reason}; re-queued")
        return storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except UpdateFinishedTrialError:  # failed as stale meanwhile: re-queued all the same
        return False


def fail_trial(storage: optuna.storages.BaseStorage, trial_id: int, error: str) -> None:
    """Mark a claimed trial FAIL for ``error`` unless it already finished; it counts."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    if storage.get_trial(trial_id).state != TrialState.RUNNING:
        return
    try:
        storage.set_trial_user_attr(trial_id, ERROR_ATTR, error)
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        pass
