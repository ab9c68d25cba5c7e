"""The trial queue: the Optuna behaviour it relies on, claims that never hand one trial to two
processes, interrupted and dead attempts re-queued, and the budget queued once by two leaders
starting together."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from tests.tuning.tune_data import (
    LR_SPACE,
    needs_postgres,
    outputs,
    pg_storage,
    release,
    start_workers,
    tune_config,
    write,
)

from mlsmith.tuning.storage import open_storage
from mlsmith.tuning.trial_queue import (
    claim_waiting_trial,
    fail_trial,
    is_requeued,
    queue_budget,
    requeue_interrupted,
    trial_for,
)

BACKENDS = ["sqlite", pytest.param("postgresql", marks=needs_postgres)]


def _url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A storage URL on a database nothing else uses."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    return str(request.getfixturevalue("pg_database"))


def _trials(url: str, study: str) -> list[Any]:
    import optuna

    if url.startswith("sqlite"):
        return optuna.load_study(study_name=study, storage=url).get_trials()
    with pg_storage(url) as storage:
        return optuna.load_study(study_name=study, storage=storage).get_trials()


# --- Optuna's behaviour, relied on ------------------------------------------------------------


@needs_postgres
def test_optuna_claim_gives_a_waiting_trial_to_exactly_one_process(
    tmp_path: Path, pg_database: str
) -> None:
    """PostgreSQL: of two processes claiming one WAITING trial at the same instant, one wins and
    the other is told False (not an error). SQLite gives no such guarantee (both can win), which
    is why claims also hold the storage lock."""
    import optuna

    rounds = 15
    with pg_storage(pg_database) as storage:
        study = optuna.create_study(study_name="s", storage=storage)
        for _ in range(rounds):
            study.enqueue_trial({})
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    workers = start_workers(
        [["optuna-claim", str(barrier), str(i), pg_database, "s", str(rounds)] for i in range(2)],
        tmp_path,
    )
    for round_ in range(rounds):
        release(barrier, 2, round_)
    first, second = (json.loads(out) for out in outputs(workers))
    for round_, answers in enumerate(zip(first, second, strict=True)):
        assert sorted(answers, key=str) == [False, True], (
            "Optuna changed: set_trial_state_values(trial, RUNNING) on a WAITING trial, from two "
            "processes at once, must return True in one and False in the other; round "
            f"{round_} answered {answers}"
        )


def test_optuna_claim_trial_object_and_tell_work_on_a_claimed_trial(tmp_path: Path) -> None:
    """A claimed trial is run through ``optuna.Trial(study, trial_id)``: it samples, reports,
    answers should_prune and is told; claiming it again is refused."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    with open_storage(f"sqlite:///{tmp_path / 'optuna.db'}") as store:
        study = optuna.create_study(study_name="s", storage=store.backend)
        assert queue_budget(store, study, 1) == 1
        trial_id = claim_waiting_trial(store, "s")
        assert trial_id is not None and claim_waiting_trial(store, "s") is None
        assert store.backend.set_trial_state_values(trial_id, state=TrialState.RUNNING) is False, (
            "Optuna changed: set_trial_state_values(trial, RUNNING) must return False for a trial "
            "that is no longer WAITING"
        )

        trial = trial_for(study, trial_id)
        assert trial.number == 0, "Optuna changed: optuna.Trial(study, trial_id) is another trial"
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.report(0.5, step=1)
        assert trial.should_prune() is False
        frozen = study.tell(trial, 0.25)
        assert (frozen.state, frozen.value, frozen.params, frozen.intermediate_values) == (
            TrialState.COMPLETE,
            0.25,
            {"x": x},
            {1: 0.5},
        ), "Optuna changed: a trial run through optuna.Trial(study, trial_id) must be told"
        with pytest.raises(UpdateFinishedTrialError):
            store.backend.set_trial_state_values(trial_id, state=TrialState.RUNNING)


# --- claims -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_claims_never_give_one_trial_to_two_processes(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    import optuna

    url = _url(backend, tmp_path, request)
    trials = 40
    with open_storage(url) as store:
        study = optuna.create_study(study_name="s", storage=store.backend)
        queue_budget(store, study, trials)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    workers = start_workers([["claim", str(barrier), str(i), url, "s"] for i in range(2)], tmp_path)
    release(barrier, 2, 0)
    first, second = (json.loads(out) for out in outputs(workers))
    assert not set(first) & set(second), f"claimed by both processes: {set(first) & set(second)}"
    assert sorted(first + second) == list(range(trials))


# --- re-queueing ------------------------------------------------------------------------------


def test_interrupted_and_dead_attempts_are_requeued_failures_count(tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    with open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_s=1, grace_s=1) as store:
        study = optuna.create_study(study_name="s", storage=store.backend)
        assert queue_budget(store, study, 3) == 3
        interrupted, failed, dead = (claim_waiting_trial(store, "s") for _ in range(3))
        assert interrupted is not None and failed is not None and dead is not None
        assert requeue_interrupted(store.backend, interrupted, "interrupted by SIGTERM")
        fail_trial(store.backend, failed, "loss became nan")
        # `dead` records no heartbeat after its claim, as if its process were killed. SQLite's
        # clock has whole seconds: 3 s is surely more than the 1 s grace.
        time.sleep(3)
        assert queue_budget(store, study, 3) == 2  # the interrupted one and the dead one
        live = claim_waiting_trial(store, "s")
        assert live is not None
        assert queue_budget(store, study, 3) == 0  # a fresh heartbeat is not stale; idempotent

        study_id = store.backend.get_study_id_from_name("s")
        by_id = {
            store.backend.get_trial_id_from_study_id_trial_number(study_id, t.number): t
            for t in study.get_trials()
        }
        assert by_id[dead].state == TrialState.FAIL, (
            "Optuna changed: optuna.storages.fail_stale_trials must fail a RUNNING trial whose "
            "heartbeat is older than the storage's grace period"
        )
        assert [is_requeued(by_id[i]) for i in (interrupted, failed, dead)] == [True, False, True]
        assert by_id[interrupted].user_attrs["error"] == "interrupted by SIGTERM; re-queued"
        assert by_id[live].state == TrialState.RUNNING
        states = sorted(t.state.name for t in by_id.values())
        assert states == ["FAIL", "FAIL", "FAIL", "RUNNING", "WAITING"]


# --- queueing the budget ----------------------------------------------------------------------


@pytest.mark.parametrize("start", ["empty study", "no database"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_leaders_starting_together_queue_the_budget_once(
    tmp_path: Path, backend: str, start: str, request: pytest.FixtureRequest
) -> None:
    """Two `mlsmith tune` leaders released at the same instant on one empty shared study, or on
    a database without even Optuna's tables: the tables are created once and the study holds
    exactly its budget of trials.

    The leaders start no trial (``timeout=0``): queueing 40 trials costs no training and keeps
    both processes queueing long enough to collide every time without the lock. That workers run
    exactly what is queued is the business of the claim tests above.
    """
    import optuna

    url = _url(backend, tmp_path, request)
    budget = 40
    cfg = tune_config(tmp_path, {"train.optimizer.lr": LR_SPACE}, trials=budget)
    path = write(tmp_path, cfg)
    if start == "empty study":
        with open_storage(url) as store:
            optuna.create_study(study_name="shared", storage=store.backend)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    workers = start_workers(
        [["tune", str(barrier), str(i), str(path), url, "shared", "0"] for i in range(2)],
        tmp_path,
    )
    release(barrier, 2, 0)
    counts = [json.loads(out) for out in outputs(workers)]
    queued = _trials(url, "shared")
    assert len(queued) == budget, (
        f"two leaders queued {len(queued)} trials for a budget of {budget}"
    )
    assert all(t.state.name == "WAITING" for t in queued)
    assert [c["WAITING"] for c in counts] == [budget, budget], counts
