"""A/B routing: weighted splits within binomial tolerance, sticky keys that stick everywhere."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from mlsmith.config.serve import RouteConfig
from mlsmith.serving.routing import Router

N = 2000


def route(weights: Mapping[str, float], **extra: object) -> RouteConfig:
    variants = [{"name": n, "model": f"runs/{n}", "weight": w} for n, w in weights.items()]
    return RouteConfig.model_validate({"variants": variants, **extra})


def assert_split(counts: Counter[str], weights: Mapping[str, float], n: int) -> None:
    """Each variant's count within 4 binomial standard deviations of its expected share."""
    total = sum(weights.values())
    assert sum(counts.values()) == n
    for name, weight in weights.items():
        p = weight / total
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(counts[name] - n * p) <= 4 * sigma + 1e-9, (name, counts, weights)


@pytest.mark.parametrize(
    "weights",
    [{"champion": 90, "challenger": 10}, {"a": 5, "b": 3, "c": 2}],
    ids=["90-10", "three-variants"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_keyless_split_matches_weights(weights: dict[str, float], seed: int) -> None:
    router = Router(route(weights), seed=seed)
    counts = Counter(router.choose() for _ in range(N))
    assert_split(counts, weights, N)


def test_keyless_draws_are_reproducible_by_seed() -> None:
    weights = {"champion": 50, "challenger": 50}
    a, b = Router(route(weights), seed=7), Router(route(weights), seed=7)
    assert [a.choose() for _ in range(200)] == [b.choose() for _ in range(200)]


@pytest.mark.parametrize("weights", [{"champion": 90, "challenger": 10}, {"a": 5, "b": 3, "c": 2}])
def test_keys_spread_across_variants_by_weight(weights: dict[str, float]) -> None:
    router = Router(route(weights))
    counts = Counter(router.choose(f"user-{i}") for i in range(N))
    assert_split(counts, weights, N)


def test_sticky_keys_stick_within_and_across_instances() -> None:
    weights = {"champion": 50, "challenger": 30, "third": 20}
    keys = [f"user-{i}" for i in range(300)]
    # Different seeds: keyed choices must not depend on them.
    a, b = Router(route(weights), seed=1), Router(route(weights), seed=2)
    first = [a.choose(k) for k in keys]
    assert [a.choose(k) for k in keys] == first
    assert [b.choose(k) for k in keys] == first
    assert len(set(first)) == 3


def test_sticky_keys_stick_across_processes() -> None:
    """Another interpreter, with another hash salt, maps every key to the same variant."""
    weights = {"champion": 90, "challenger": 10}
    keys = [f"user-{i}" for i in range(200)] + ["", "ключ", "🙂"]
    code = (
        "import json, sys\n"
        "from mlsmith.config.serve import RouteConfig\n"
        "from mlsmith.serving.routing import Router\n"
        "cfg, keys = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n"
        "router = Router(RouteConfig.model_validate(cfg), seed=123)\n"
        "print(json.dumps([router.choose(k) for k in keys]))\n"
    )
    cfg = route(weights).model_dump(mode="json")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cfg), json.dumps(keys)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=60,
    )
    here = Router(route(weights))
    assert json.loads(out.stdout) == [here.choose(k) for k in keys]


def test_weight_zero_never_chosen() -> None:
    weights = {"standby": 0, "champion": 3, "dormant": 0, "challenger": 1}
    router = Router(route(weights))
    assert router.variants == ("standby", "champion", "dormant", "challenger")
    keyless = {router.choose() for _ in range(N)}
    keyed = {router.choose(f"k{i}") for i in range(N)}
    assert keyless == keyed == {"champion", "challenger"}
    assert router.weights() == {"standby": 0, "champion": 0.75, "dormant": 0, "challenger": 0.25}


def test_single_positive_weight_gets_everything() -> None:
    router = Router(route({"only": 2, "off": 0}))
    assert {router.choose(k) for k in [None, "a", "b", "c"]} == {"only"}


def test_plain_model_name_is_one_variant() -> None:
    router = Router("iris")
    assert router.variants == ("iris",)
    assert router.shadow is None and router.sticky is None
    assert {router.choose(), router.choose("k")} == {"iris"}
    assert router.sticky_key({"x-user": "a"}, {"user": ["a"]}) is None


def test_shadow_is_named_but_never_chosen() -> None:
    router = Router(
        route({"a": 1, "b": 1}, shadow={"name": "candidate", "model": "runs/c"}),
    )
    assert router.shadow == "candidate"
    assert "candidate" not in {router.choose() for _ in range(500)}


@pytest.mark.parametrize("sent", ["x-user-id", "X-USER-ID", "X-User-Id"])
def test_sticky_header_is_case_insensitive(sent: str) -> None:
    router = Router(route({"a": 1, "b": 1}, sticky={"header": "X-User-Id"}))
    assert router.sticky_key({"content-type": "application/json", sent: "u-42"}, None) == "u-42"


def test_sticky_input_reads_the_first_row() -> None:
    router = Router(route({"a": 1, "b": 1}, sticky={"input": "customer"}))
    assert router.sticky_key({}, {"customer": ["c-1", "c-2"], "x": [1, 2]}) == "c-1"
    # The same id sent as INT64, FP64 or a numpy scalar is the same key.
    assert router.sticky_key({}, {"customer": [42]}) == "42"
    assert router.sticky_key({}, {"customer": [42.0]}) == "42"
    assert router.sticky_key({}, {"customer": np.array([[42]])}) == "42"
    assert router.sticky_key({}, {"customer": [b"bytes-id"]}) == "bytes-id"
    missing: Mapping[str, Any] | None
    for missing in [None, {}, {"customer": []}, {"customer": [None]}, {"customer": [math.nan]}]:
        assert router.sticky_key({}, missing) is None


def test_sticky_header_wins_over_input() -> None:
    router = Router(route({"a": 1, "b": 1}, sticky={"header": "X-User", "input": "customer"}))
    assert router.sticky_key({"x-user": "h"}, {"customer": ["i"]}) == "h"
    assert router.sticky_key({"x-user": ""}, {"customer": ["i"]}) == "i"
    assert router.sticky_key({}, {"customer": ["i"]}) == "i"


def test_missing_key_falls_back_to_weighted_random() -> None:
    weights = {"champion": 90, "challenger": 10}
    router = Router(route(weights, sticky={"header": "X-User"}))
    key = router.sticky_key({"accept": "*/*"}, None)
    assert key is None
    counts = Counter(router.choose(key) for _ in range(N))
    assert_split(counts, weights, N)


def test_choose_is_thread_safe() -> None:
    weights = {"a": 1, "b": 1}
    router = Router(route(weights))
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def work() -> None:
        local = Counter(router.choose() for _ in range(500))
        with lock:
            counts.update(local)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert_split(counts, weights, 4000)
