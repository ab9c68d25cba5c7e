"""What an export measures: raw outputs over the check rows, milliseconds per call, and how two
versions of a network differ on the task's headline metric.

The writer times every format against torch eager with these; quantization and pruning compare
what they produce with the network they started from the same way, so every figure in
``export.json`` is measured on the same rows, batches and clock.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.evaluation import paired_difference

if TYPE_CHECKING:
    from mlsmith.runtime.package import Encoder
    from mlsmith.tasks import Task

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]

# The batch sizes latency is measured at, and the most input memory the large one may take.
LATENCY_BATCHES = (1, 1024)
LATENCY_MEMORY = 256 * 2**20
# A timing stops repeating once it has spent this long (after its first call): a slow variant
# (dynamic int8 convolutions run several times slower than float) must not stall the export.
TIMING_BUDGET_S = 3.0


def raw_outputs(
    run: Runner, encoder: Encoder, encoded: dict[str, np.ndarray], batch_size: int
) -> np.ndarray:
    """``run`` over every encoded row, ``batch_size`` rows a call: float64 raw outputs."""
    n = len(next(iter(encoded.values())))
    chunks = [
        run(encoder.batch(encoded, start, min(start + batch_size, n)))
        for start in range(0, n, batch_size)
    ]
    return np.concatenate(chunks).astype(np.float64)


def timing_inputs(
    encoder: Encoder, encoded: dict[str, np.ndarray], batch: int
) -> tuple[int, dict[str, np.ndarray]]:
    """A batch of ``batch`` rows (the check rows repeated; fewer when they would take more than
    :data:`LATENCY_MEMORY`) as the model's inputs, and its size."""
    n = len(next(iter(encoded.values())))
    row_bytes = sum(v[:1].nbytes for v in encoded.values())
    size = max(1, min(batch, LATENCY_MEMORY // max(row_bytes, 1)))
    picked = np.arange(size) % n
    rows = {k: v[picked] for k, v in encoded.items()}
    return size, encoder.batch(rows, 0, size)


def median_ms(run: Runner, inputs: dict[str, np.ndarray], repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls after one warm-up call (fewer past
    :data:`TIMING_BUDGET_S`; a warm-up call longer than that is the measurement itself, its
    first-call costs being small beside it)."""
    start = time.perf_counter()
    run(inputs)  # warm-up: first calls allocate and pick kernels
    warm_up = time.perf_counter() - start
    if warm_up > TIMING_BUDGET_S:
        return warm_up * 1000
    times: list[float] = []
    spent = time.perf_counter()
    for _ in range(repeats):
        start = time.perf_counter()
        run(inputs)
        times.append((time.perf_counter() - start) * 1000)
        if time.perf_counter() - spent > TIMING_BUDGET_S:
            break
    return statistics.median(times)


def repeats_for(rows: int) -> int:
    """How many timed calls a batch gets: single rows are fast and noisy, large batches slow."""
    return 20 if rows == 1 else 3


def headline_metric(task: Task) -> str:
    """The metric a comparison leads with: the task's first of the reports' headline metrics
    (accuracy for classification, rmse for regression), as ``mlsmith promote`` picks it."""
    from mlsmith.reports.facts import HEADLINE_METRICS

    return next(m for m in HEADLINE_METRICS if m in task.metric_names)


def metric_difference(
    task: Task,
    truth: np.ndarray,
    base_raw: np.ndarray,
    variant_raw: np.ndarray,
    *,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """The headline metric of a variant and of the network it came from on the same rows, the
    signed difference (variant - base, in the metric's own direction) and its paired bootstrap
    95% interval."""
    metric = headline_metric(task)
    variant, base, difference, low, high = paired_difference(
        task.kind,
        truth,
        task.decode(variant_raw),
        task.decode(base_raw),
        metric,
        n_resamples=resamples,
        confidence=0.95,
        seed=seed,
        thresholds=(task.threshold, task.threshold),
    )
    return {
        "metric": metric,
        "base": _finite(base),
        "variant": _finite(variant),
        "difference": _finite(difference),
        "ci95": [_finite(low), _finite(high)],
        "rows": len(truth),
    }


def _finite(value: float) -> float | None:
    # export.json is strict JSON: a metric undefined on these rows (a single class) is null.
    return float(value) if math.isfinite(value) else None
