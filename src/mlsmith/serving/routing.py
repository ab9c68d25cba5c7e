"""A/B routing: which variant of a served name answers a request.

A route splits traffic between weighted variants. A request carrying a sticky key (a header or
the first row of an input, as ``serve.yaml`` says) always lands on the same variant: the key is
hashed with BLAKE2b onto ``[0, 1)`` and that point falls into one variant's share of the
cumulative weights. The hash is stable across processes, workers and restarts, unlike Python's
``hash()``, which is salted per process. Changing the weights moves only the keys whose point
crosses a moved boundary. Requests without a key draw from a seeded ``random.Random``.

The shadow is not chosen here: it gets a copy of every request, whatever variant answers.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from mlsmith.config.serve import RouteConfig, StickyConfig

__all__ = ["Router"]

# 64 bits of the digest: far finer than any weight anyone writes, and exact in a Python int.
_HASH_BYTES = 8
_HASH_SPAN = float(2 ** (8 * _HASH_BYTES))


class Router:
    """Chooses the variant of one served name that answers each request.

    Built from a :class:`RouteConfig`, or from a plain served name (one variant, weight 1, which
    every request gets). Variants of weight 0 are listed in :attr:`variants` but never chosen.
    ``seed`` seeds the draw for keyless requests (``None``: seeded from the OS); keyed requests
    never depend on it. Safe to share between threads.
    """

    def __init__(self, route: RouteConfig | str, *, seed: int | None = 0) -> None:
        if isinstance(route, str):
            weighted: list[tuple[str, float]] = [(route, 1.0)]
            self.shadow: str | None = None
            self.sticky: StickyConfig | None = None
        else:
            weighted = [(v.name, v.weight) for v in route.variants]
            self.shadow = route.shadow.name if route.shadow is not None else None
            self.sticky = route.sticky
        self.variants: tuple[str, ...] = tuple(name for name, _ in weighted)
        # Weight-0 variants are left out of the table, so no rounding can ever land on them.
        live = [(name, weight) for name, weight in weighted if weight > 0]
        if not live:
            raise ValueError("a route needs at least one variant with a positive weight")
        self._names = [name for name, _ in live]
        self._bounds = list(itertools.accumulate(weight for _, weight in live))
        self._total = self._bounds[-1]
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def weights(self) -> dict[str, float]:
        """Each variant's share of the traffic, summing to 1 (weight-0 variants at 0)."""
        shares = dict.fromkeys(self.variants, 0.0)
        previous = 0.0
        for name, bound in zip(self._names, self._bounds, strict=True):
            shares[name] = (bound - previous) / self._total
            previous = bound
        return shares

    def choose(self, key: str | None = None) -> str:
        """The variant that answers a request: fixed by ``key`` when given, else drawn by weight."""
        if len(self._names) == 1:
            return self._names[0]
        if key is None:
            # random.Random is not documented as thread-safe; the lock makes it so, cheaply.
            with self._lock:
                point = self._random.random()
        else:
            point = _unit_hash(key)
        index = bisect.bisect_right(self._bounds, point * self._total)
        # point < 1, but point * total can round up to total itself.
        return self._names[min(index, len(self._names) - 1)]

    def sticky_key(
        self, headers: Mapping[str, str], inputs: Mapping[str, Sequence[Any]] | None = None
    ) -> str | None:
        """The request's sticky key: the configured header (any case), else the first row of the
        configured input; ``None`` when the route is not sticky or the request carries neither.
        """
        if self.sticky is None:
            return None
        if self.sticky.header is not None:
            value = _header(headers, self.sticky.header)
            if value:
                return value
        if self.sticky.input is not None and inputs is not None:
            values = inputs.get(self.sticky.input)
            if values is not None and len(values) > 0:
                return _key_text(values[0])
        return None


def _unit_hash(key: str) -> float:
    """``key`` to a point in ``[0, 1)``, the same in every process and on every platform."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=_HASH_BYTES).digest()
    return int.from_bytes(digest, "big") / _HASH_SPAN


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # Starlette's Headers already match any case; a plain dict (tests, other callers) does not.
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def _key_text(value: Any) -> str | None:
    """An input value as a key; 42, 42.0 and np.int64(42) give the same key, as the same id
    sent once as INT64 and once as FP64 should stick to the same variant."""
    # A column sent with shape [n, 1] gives one-element rows.
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if hasattr(value, "item") and getattr(value, "size", 1) == 1:  # numpy scalars and arrays
        value = value.item()
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer():
            value = int(value)
    text = str(value)
    return text or None
