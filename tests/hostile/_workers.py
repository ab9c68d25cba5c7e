"""Worker processes for the concurrency tests, released together by a file barrier.

    python tests/hostile/_workers.py tracker BARRIER_DIR INDEX ROUNDS OUTPUT_DIR [URI]
    python tests/hostile/_workers.py train BARRIER_DIR INDEX CONFIG

Each worker imports everything first, writes ``ready-<round>-<index>`` in BARRIER_DIR and waits
for ``go-<round>``, so the processes reach the tracking store within a millisecond of each other.
It prints one JSON line per round on stdout.
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


def tracker_rounds(
    barrier: Path, index: int, rounds: int, output_dir: str, uri: str | None
) -> None:
    """Each round: a fresh store (a new output_dir), one run started, logged and finished."""
    import mlflow  # noqa: F401  (imported before the barrier: only the store work races)

    from mlsmith.config import TrackConfig
    from mlsmith.tracking import Tracker

    for round_ in range(rounds):
        wait_for_go(barrier, round_, index)
        tracker = Tracker(
            TrackConfig(uri=uri), output_dir=Path(output_dir) / f"round-{round_}", experiment="e"
        )
        run_id = tracker.start(run_name=f"w{index}", params={"worker": index}, tags={})
        tracker.log_metrics({"val/loss": 1.0 / (index + 1)}, step=1)
        tracker.finish("FINISHED")
        print(json.dumps({"round": round_, "worker": index, "run_id": run_id}), flush=True)


def train(barrier: Path, index: int, config: str) -> None:
    """One real `mlsmith train` through the CLI entry point, after the barrier."""
    import mlflow  # noqa: F401
    import torch  # noqa: F401

    import mlsmith.api  # noqa: F401
    from mlsmith.cli import main

    wait_for_go(barrier, 0, index)
    try:
        main(["train", config, "--no-progress"])
    except SystemExit as done:
        print(json.dumps({"worker": index, "code": done.code}), flush=True)


if __name__ == "__main__":
    kind, barrier_dir, worker = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    if kind == "tracker":
        uri = sys.argv[6] if len(sys.argv) > 6 else None
        tracker_rounds(barrier_dir, worker, int(sys.argv[4]), sys.argv[5], uri)
    else:
        train(barrier_dir, worker, sys.argv[4])
