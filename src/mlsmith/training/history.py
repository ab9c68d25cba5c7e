"""``history.csv`` (one row per epoch) and ``steps.csv`` (one row per optimizer step) in the run
directory, kept equal to what the trainer has recorded.

history.csv is small and rewritten atomically each epoch. steps.csv grows by the epoch's rows,
appended: rewriting it whole every epoch would cost time quadratic in the run's length. At the
start of a fit (a resume included) it is rewritten once from the trainer's rows, which drops any
steps taken after the checkpoint the run continues from, and any row a crash left half-written.
Its ``grad_norm/<layer>`` columns hold the per-layer gradient norms of the sampled steps
(``train.layer_grad_norm_every``) and are empty on the others.
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
            write_text(
                self.steps_path, _csv(rows, _layers(state, rows), state.layer_names, header=True)
            )
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
            handle.write(_csv(rows, _layers(state, rows), state.layer_names, header=False))
        self.steps_written += len(rows)


def _layers(state: TrainingState, rows: list[tuple[float, ...]]) -> dict[int, tuple[float, ...]]:
    """The per-layer norms sampled among ``rows``' steps, by step."""
    if not state.layer_names or not rows:
        return {}
    first = int(rows[0][0])
    found: dict[int, tuple[float, ...]] = {}
    for sample in reversed(state.layer_rows):  # the newest are the ones wanted: from the end
        if int(sample[0]) < first:
            break
        found[int(sample[0])] = sample[1:]
    return found


def _csv(
    rows: list[tuple[float, ...]],
    layers: dict[int, tuple[float, ...]],
    names: list[str],
    *,
    header: bool,
) -> str:
    """Step rows as CSV lines: step and epoch as integers, the rest as Python writes floats,
    then the norms of the layers ``names`` where the step was sampled."""
    from mlsmith.training.diagnostics import LAYER_PREFIX, STEP_COLUMNS

    lines = [",".join([*STEP_COLUMNS, *(LAYER_PREFIX + n for n in names)])] if header else []
    empty = [""] * len(names)
    for step, epoch, *values in rows:
        sampled = layers.get(int(step))
        cells = [_number(v) for v in sampled] if sampled is not None else empty
        lines.append(",".join([str(int(step)), str(int(epoch)), *map(_number, values), *cells]))
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    # As pandas writes them, so the file reads back the same: repr keeps every digit.
    return "" if value != value else repr(float(value))  # NaN is an empty cell
