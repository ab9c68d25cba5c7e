"""Seeding, deterministic mode, and global RNG states as checkpointable values."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mlsmith.training.reproducibility import (
    restore_rng_states,
    rng_states,
    seed_everything,
    set_deterministic,
)


def draw() -> dict[str, Any]:
    """Numbers from every global generator, plus a freshly initialised network with dropout."""
    net = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    return {
        "python": [random.random() for _ in range(3)] + [random.randint(0, 10**9)],
        "numpy": np.random.rand(4),
        "numpy_normal": np.random.standard_normal(3),
        "torch": torch.rand(4),
        "weights": [p.detach().clone() for p in net.parameters()],
        "dropout": net.train()(torch.ones(5, 6)),
    }


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["python"] == b["python"]
    assert np.array_equal(a["numpy"], b["numpy"])
    assert np.array_equal(a["numpy_normal"], b["numpy_normal"])
    assert torch.equal(a["torch"], b["torch"])
    assert all(torch.equal(x, y) for x, y in zip(a["weights"], b["weights"], strict=True))
    assert torch.equal(a["dropout"], b["dropout"])


def test_seed_everything_makes_runs_identical() -> None:
    seed_everything(1234)
    first = draw()
    random.random(), np.random.rand(), torch.rand(1)  # move every generator on
    seed_everything(1234)
    assert_same(first, draw())


def test_different_seeds_differ() -> None:
    seed_everything(1)
    first = draw()
    seed_everything(2)
    second = draw()
    assert first["python"] != second["python"]
    assert not np.array_equal(first["numpy"], second["numpy"])
    assert not torch.equal(first["torch"], second["torch"])


def test_seed_beyond_numpy_range_is_accepted() -> None:
    seed_everything(2**40 + 5)
    first = draw()
    seed_everything(2**40 + 5)
    assert_same(first, draw())


def test_rng_states_restore_every_generator() -> None:
    seed_everything(7)
    np.random.standard_normal()  # one Gaussian cached in NumPy's legacy state
    states = rng_states()
    expected = draw()
    seed_everything(99)
    draw()
    restore_rng_states(states)
    assert_same(expected, draw())


@pytest.mark.parametrize("generator", ["python", "numpy", "torch"])
def test_each_generator_is_restored_on_its_own(generator: str) -> None:
    seed_everything(3)
    states = rng_states()
    draws = {
        "python": lambda: random.random(),
        "numpy": lambda: float(np.random.rand()),
        "torch": lambda: float(torch.rand(1)),
    }
    before = draws[generator]()
    seed_everything(4)
    restore_rng_states(states)
    assert draws[generator]() == before


def test_states_use_only_types_a_safe_load_accepts(tmp_path: Any) -> None:
    seed_everything(5)
    path = tmp_path / "rng.pt"
    torch.save(rng_states(), path)
    expected = draw()
    seed_everything(6)
    restore_rng_states(torch.load(path, weights_only=True))
    assert_same(expected, draw())


def test_set_deterministic_toggles_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # restored afterwards
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        set_deterministic(False)
        assert not torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1:]
