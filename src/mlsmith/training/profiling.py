"""``train.profile``: torch.profiler over a few optimizer steps, and where their time went.

The profiler starts with the loop, lets ``warmup`` steps pass unrecorded (first-step allocations
and lazy initialisation are not the steady state), then records ``steps`` steps. It writes
``trace.json`` (open it in chrome://tracing or https://ui.perfetto.dev) and ``profile.json``: the
operators with the most self time, the share of each recorded step spent waiting for its
batch versus computing, and the peak memory. Then it is dropped, so the rest of the run is not
slowed down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

from mlsmith.config import ProfileConfig
from mlsmith.files import atomic_path, write_json
from mlsmith.training.diagnostics import peak_memory_mb

log = logging.getLogger(__name__)

TRACE = "trace.json"
SUMMARY = "profile.json"
TOP_OPERATORS = 15

T = TypeVar("T")


class StepProfiler:
    """Records optimizer steps ``warmup`` to ``warmup + steps``; :meth:`step` after each one."""

    def __init__(self, config: ProfileConfig, directory: str | Path, device: torch.device) -> None:
        from torch.profiler import ProfilerActivity, profile, schedule

        self.directory = Path(directory)
        self.device = device
        self.cuda = device.type == "cuda"
        self.warmup, self.steps = config.warmup, config.steps
        self.taken = 0  # optimizer steps since the profiler started
        self.recorded = 0
        # Seconds over the recorded steps: waiting for batches, and the whole step (the wait
        # included), each measured from the first batch request after the previous step.
        self.fetch_s = self.total_s = 0.0
        self._fetch = 0.0
        self._fetch_started: float | None = None
        self.written = False
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.profiler = profile(
            activities=activities,
            schedule=schedule(wait=0, warmup=self.warmup, active=self.steps, repeat=1),
            on_trace_ready=self._write,
            profile_memory=True,
        )
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        self.profiler.start()

    def timed(self, batches: Iterable[T]) -> Iterator[T]:
        """``batches``, timing how long each one takes to arrive."""
        iterator = iter(batches)
        while True:
            started = time.perf_counter()
            if self._fetch_started is None:
                self._fetch_started = started
            try:
                item = next(iterator)
            except StopIteration:
                return
            self._fetch += time.perf_counter() - started
            yield item

    def step(self) -> bool:
        """Count one optimizer step; True once the trace and summary are written."""
        if self.taken >= self.warmup:
            if self.cuda:
                torch.cuda.synchronize(self.device)  # the step's kernels belong to the step
            if self._fetch_started is not None:
                self.total_s += time.perf_counter() - self._fetch_started
                self.fetch_s += self._fetch
                self.recorded += 1
        self._fetch, self._fetch_started = 0.0, None
        self.taken += 1
        self.profiler.step()  # after warmup + steps calls, the schedule writes (see _write)
        if self.written:
            self.profiler.stop()
        return self.written

    def close(self) -> None:
        """Stop early (the run ended or failed first); what was recorded is still written."""
        if not self.written:
            self.profiler.stop()
        if not self.written:  # stopped during the warm-up: the schedule recorded nothing
            log.warning(
                "train.profile: training ended after %d steps, within the profile's %d warm-up "
                "steps: nothing was recorded; lower train.profile.warmup",
                self.taken,
                self.warmup,
            )

    def _write(self, profiler: Any) -> None:
        with atomic_path(self.directory / TRACE) as tmp:
            profiler.export_chrome_trace(str(tmp))
        write_json(self.directory / SUMMARY, self.summary(profiler))
        self.written = True

    def summary(self, profiler: Any) -> dict[str, Any]:
        """What profile.json holds: step timing, top operators and peak memory."""
        events = [e for e in profiler.key_averages() if not e.key.startswith("ProfilerStep")]
        by_cpu = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
        summary: dict[str, Any] = {
            "device": str(self.device),
            "steps": self.recorded,
            "warmup_steps": self.warmup,
            "step_ms": _ms(self.total_s / max(self.recorded, 1)),
            "data_wait_ms": _ms(self.fetch_s / max(self.recorded, 1)),
            # Of each recorded step's wall time: waiting for the batch vs everything else.
            "data_wait_share": round(self.fetch_s / self.total_s, 4) if self.total_s else None,
            "compute_share": round(1 - self.fetch_s / self.total_s, 4) if self.total_s else None,
            "peak_memory_mb": round(peak_memory_mb(self.device), 1),
            "trace": TRACE,
            "top_cpu_operators": [_operator(e, self.cuda) for e in by_cpu[:TOP_OPERATORS]],
        }
        if self.cuda:
            by_device = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)
            summary["top_cuda_operators"] = [
                _operator(e, cuda=True) for e in by_device[:TOP_OPERATORS]
            ]
        return summary


def _operator(event: Any, cuda: bool) -> dict[str, Any]:
    # The profiler reports microseconds.
    row = {
        "name": event.key,
        "calls": event.count,
        "self_cpu_ms": _ms(event.self_cpu_time_total / 1e6),
        "cpu_ms": _ms(event.cpu_time_total / 1e6),
    }
    if cuda:
        row["self_cuda_ms"] = _ms(event.self_device_time_total / 1e6)
    return row


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
