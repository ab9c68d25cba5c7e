"""Worker processes for the tuning concurrency tests, released together by a file barrier.

    python tests/tuning/_workers.py optuna-claim BARRIER_DIR INDEX URL STUDY ROUNDS
    python tests/tuning/_workers.py claim BARRIER_DIR INDEX URL STUDY
    python tests/tuning/_workers.py tune BARRIER_DIR INDEX CONFIG URL STUDY [TIMEOUT]

Each worker imports everything first, writes ``ready-<round>-<index>`` in BARRIER_DIR and waits
for ``go-<round>``, so the processes reach the storage within a millisecond of each other. It
prints one JSON line on stdout.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def wait_for_go(barrier: Path, round_: int, index: int) -> None:
    (barrier / f"ready-{round_}-{index}").touch()
    go = barrier / f"go-{round_}"
    deadline = time.monotonic() + 120
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"worker {index}: no go-{round_} within 120 s")
        time.sleep(0.001)


def optuna_claim(barrier: Path, index: int, url: str, study: str, rounds: int) -> None:
    """Optuna alone: each round, claim trial number ROUND (WAITING -> RUNNING); print what
    ``set_trial_state_values`` answered each time (or the exception it raised)."""
    import optuna
    from optuna.trial import TrialState

    storage = optuna.storages.RDBStorage(url)
    study_id = storage.get_study_id_from_name(study)
    ids = [storage.get_trial_id_from_study_id_trial_number(study_id, r) for r in range(rounds)]
    answers: list[bool | str] = []
    for round_, trial_id in enumerate(ids):
        wait_for_go(barrier, round_, index)
        try:
            answers.append(storage.set_trial_state_values(trial_id, state=TrialState.RUNNING))
        except Exception as error:
            answers.append(type(error).__name__)
    storage.engine.dispose()
    print(json.dumps(answers))


def claim(barrier: Path, index: int, url: str, study: str) -> None:
    """mlsmith's claim: take queued trials until none is left; print their numbers."""
    from mlsmith.tuning.storage import open_storage
    from mlsmith.tuning.trial_queue import claim_waiting_trial

    numbers = []
    with open_storage(url) as store:
        wait_for_go(barrier, 0, index)
        while (trial_id := claim_waiting_trial(store, study)) is not None:
            numbers.append(store.backend.get_trial(trial_id).number)
    print(json.dumps(numbers))


def tune(barrier: Path, index: int, config: str, url: str, study: str, timeout: str) -> None:
    """A whole leading ``mlsmith.tune`` on the study; print its counts. A TIMEOUT of 0 queues
    the budget and starts no trial."""
    import optuna  # noqa: F401  (imported before the barrier: only the study work races)
    import torch  # noqa: F401

    import mlsmith
    import mlsmith.api

    wait_for_go(barrier, 0, index)
    result = mlsmith.tune(
        config, storage=url, study=study, timeout=float(timeout) if timeout else None
    )
    print(json.dumps(result.counts))


if __name__ == "__main__":
    kind, barrier, index, *rest = sys.argv[1:]
    if kind == "optuna-claim":
        optuna_claim(Path(barrier), int(index), rest[0], rest[1], int(rest[2]))
    elif kind == "claim":
        claim(Path(barrier), int(index), rest[0], rest[1])
    elif kind == "tune":
        tune(Path(barrier), int(index), *rest[:3], rest[3] if len(rest) > 3 else "")
    else:
        raise SystemExit(f"unknown worker kind {kind}")
