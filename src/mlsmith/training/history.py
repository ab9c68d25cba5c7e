"""``history.csv`` (one row per epoch) and ``steps.csv`` (one row per optimizer step) in the run
directory, kept equal to what the trainer has recorded.

history.csv is small and rewritten atomically each epoch. steps.csv grows by the epoch's rows,
appended: rewriting it whole every epoch would cost time quadratic in the run's length. At the
start of a fit (a resume included) it is rewritten once from the trainer's rows, which drops any
steps taken after the checkpoint the run continues from, and any row a crash left half-written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mlsmith.files import write_text

if TYPE_CHECKING:
    from mlsmith.training.callbacks import TrainingState

HISTORY_FILE = "history.csv"
STEPS_FILE = "steps.csv"


class HistoryWriter:
    """A trainer callback writing history.csv and steps.csv into ``run_dir``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / HISTORY_FILE
        self.steps_path = run_dir / STEPS_FILE
        self.steps_written = 0

    def on_fit_start(self, state: TrainingState) -> None:
        self._write_history(state)
        self._rewrite_steps(state)

    def on_epoch_end(self, state: TrainingState, row: dict[str, float]) -> None:
        self._write_history(state)
        self._append_steps(state)

    def on_exception(self, state: TrainingState, error: BaseException) -> None:
        # The steps up to a failure (a NaN loss...) are what the report needs to explain it.
        self._write_history(state)
        self._append_steps(state)

    def _write_history(self, state: TrainingState) -> None:
        import pandas as pd

        if state.history:
            write_text(self.path, pd.DataFrame(state.history).to_csv(index=False))
        else:
            self.path.unlink(missing_ok=True)

    def _rewrite_steps(self, state: TrainingState) -> None:
        rows = state.step_rows
        if rows:
            write_text(self.steps_path, _csv(rows, header=True))
        else:
            self.steps_path.unlink(missing_ok=True)
        self.steps_written = len(rows)

    def _append_steps(self, state: TrainingState) -> None:
        rows = state.step_rows[self.steps_written :]
        if not rows:
            return
        if not self.steps_path.exists():
            self._rewrite_steps(state)
            return
        with self.steps_path.open("a") as handle:
            handle.write(_csv(rows, header=False))
        self.steps_written += len(rows)


def _csv(rows: list[tuple[float, ...]], *, header: bool) -> str:
    """Step rows as CSV lines: step and epoch as integers, the rest as Python writes floats."""
    from mlsmith.training.diagnostics import STEP_COLUMNS

    lines = [",".join(STEP_COLUMNS)] if header else []
    for step, epoch, *values in rows:
        lines.append(",".join([str(int(step)), str(int(epoch)), *(_number(v) for v in values)]))
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    # As pandas writes them, so the file reads back the same: repr keeps every digit.
    return "" if value != value else repr(float(value))  # NaN is an empty cell
