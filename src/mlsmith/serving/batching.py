"""Adaptive batching: concurrent requests to one model answered by one inference call.

One predictor thread per model runs the calls, so inference never blocks the event loop. While
it is busy, arriving requests queue; when it is free it takes everything queued (up to
``max_batch_size`` rows) as one call. Under load batches therefore grow by themselves, and a lone
request waits for nobody: ``max_latency_ms`` only applies when other requests are already in
flight, so at concurrency 1 batching costs nothing. A merged call that fails (one request's bad
rows) is retried request by request, so one client's mistake is never another's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# A request's payload (anything with a len(): its rows) to the answer for those rows. Payloads of
# several requests are merged for one call, and each request gets its rows of the answer back.
Predict = Callable[[Any], Any]
Merge = Callable[[list[Any]], Any]
Part = Callable[[Any, int, int], Any]
# Called after each inference call with (rows, requests) it served: the batch-size histogram.
Observe = Callable[[int, int], None]


@dataclass
class _Item:
    frame: Any  # the request's payload; len() is its rows
    predict: Predict
    future: asyncio.Future[Any]
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """Merges concurrent :meth:`predict` calls for one model into batched calls of ``predict``."""

    def __init__(
        self,
        *,
        max_batch_size: int = 64,
        max_latency_ms: float = 1.0,
        enabled: bool = True,
        observe: Observe | None = None,
        name: str = "model",
        merge: Merge | None = None,
        part: Part | None = None,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_latency = max_latency_ms / 1000
        self.enabled = enabled
        self.observe = observe
        # How payloads merge and answers split: DataFrames by default.
        self.merge: Merge = merge or _concat_frames
        self.part: Part = part or _rows_of_frame
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"predict-{name}")
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._arriving = 0  # requests announced (see arrival) and not queued yet

    @property
    def depth(self) -> int:
        """Requests waiting for the predictor (the queue-depth gauge)."""
        return self._queue.qsize() if self._queue is not None else 0

    @contextmanager
    def arrival(self) -> Iterator[Arrival]:
        """Announce a request from the moment it arrives, before its body is read: a batch
        being formed waits (at most ``max_latency_ms``) only for requests announced this way."""
        arrival = Arrival(self)
        self._arriving += 1
        try:
            yield arrival
        finally:
            if not arrival.queued:
                self._arriving -= 1

    async def _predict(self, arrival: Arrival, frame: Any, predict: Predict) -> Any:
        loop = asyncio.get_running_loop()
        if not self.enabled:
            arrival.queued = True
            self._arriving -= 1
            result = await loop.run_in_executor(self._executor, predict, frame)
            if self.observe:
                self.observe(len(frame), 1)
            return result
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._run())
        item = _Item(frame, predict, loop.create_future())
        arrival.queued = True
        self._arriving -= 1
        self._queue.put_nowait(item)
        return await item.future

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        carry: _Item | None = None
        while True:
            first = carry if carry is not None else await queue.get()
            carry = None
            batch, rows = [first], len(first.frame)
            deadline = time.perf_counter() + self.max_latency
            while rows < self.max_batch_size:
                if queue.empty():
                    # Wait for company only when some is on its way: requests announced and
                    # still being read.
                    remaining = deadline - time.perf_counter()
                    if self._arriving <= 0 or remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(queue.get(), remaining)
                    except TimeoutError:
                        break
                else:
                    item = queue.get_nowait()
                if item.predict != first.predict or rows + len(item.frame) > self.max_batch_size:
                    carry = item  # another version, or too big to join: it opens the next batch
                    break
                batch.append(item)
                rows += len(item.frame)
            await loop.run_in_executor(self._executor, self._serve, batch, loop)

    def _serve(self, batch: list[_Item], loop: asyncio.AbstractEventLoop) -> None:
        """Run one merged call in the predictor thread and hand each request its rows."""

        predict = batch[0].predict
        results: list[tuple[_Item, Any]] = []
        if len(batch) == 1:
            try:
                results.append((batch[0], predict(batch[0].frame)))
            except Exception as exc:
                results.append((batch[0], exc))
        else:
            try:
                merged = predict(self.merge([item.frame for item in batch]))
                start = 0
                for item in batch:
                    stop = start + len(item.frame)
                    results.append((item, self.part(merged, start, stop)))
                    start = stop
            except Exception:
                # Someone's rows are bad: answer each request on its own rows.
                for item in batch:
                    try:
                        results.append((item, predict(item.frame)))
                    except Exception as exc:
                        results.append((item, exc))
        if self.observe:
            self.observe(sum(len(item.frame) for item in batch), len(batch))
        for item, result in results:
            loop.call_soon_threadsafe(_settle, item.future, result)

    async def close(self) -> None:
        """Stop the worker; queued requests have been answered by then (the server drains
        before it closes)."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=True)


class Arrival:
    """One request's place with a :class:`Batcher` (see :meth:`Batcher.arrival`)."""

    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher
        self.queued = False

    async def predict(self, frame: Any, predict: Predict) -> Any:
        """``predict(frame)``, possibly as part of a larger call with other requests' rows.

        ``predict`` is the model version current when the request arrived: requests merge only
        with requests for the same version.
        """
        return await self.batcher._predict(self, frame, predict)


def _concat_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


def _rows_of_frame(frame: pd.DataFrame, start: int, stop: int) -> pd.DataFrame:
    return frame.iloc[start:stop].reset_index(drop=True)


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
