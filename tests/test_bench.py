"""The benchmark scripts' own logic: the figures the README quotes come from these functions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def bench_modules() -> tuple[object, object]:
    sys.path.insert(0, str(BENCH))
    try:
        import defaults
        import overhead
    finally:
        sys.path.remove(str(BENCH))
    return defaults, overhead


def test_every_family_default_is_in_every_axis_grid(bench_modules: tuple) -> None:
    """A grid that no longer holds the real default would compare the grid with nothing."""
    defaults, _ = bench_modules
    for family in defaults.FAMILIES:
        for axis in defaults.AXES.values():
            if axis.values_for(family):
                assert defaults.default_value(family, axis) in axis.values_for(family)
    assert defaults.default_value("bag", defaults.AXES["lr"]) == "3e-3"
    assert defaults.default_value("mlp", defaults.AXES["width"]) == "[256,128]"


def test_a_default_missing_from_the_grid_stops_the_benchmark(bench_modules: tuple) -> None:
    defaults, _ = bench_modules
    axis = defaults.Axis("model.dropout", {"*": ("0.0", "0.5")})
    with pytest.raises(SystemExit, match=r"model.dropout=0.1 is not in the grid"):
        defaults.default_value("mlp", axis)


def test_interleaved_overhead_runs_both_loops_to_the_same_weights(bench_modules: tuple) -> None:
    _, overhead = bench_modules
    args = argparse.Namespace(
        rows=1024, features=16, batch_size=128, eval_batch_size=512, epochs=2, lr=1e-3,
        weight_decay=1e-2,
    )  # fmt: skip
    initial = overhead.make_model(args.features, [16, 16])
    raw, mine, raw_model, model = overhead.lockstep(initial, overhead.Data(args.rows, 16), args)
    assert raw > 0 and mine > 0
    for key, value in raw_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert not torch.equal(
        raw_model.state_dict()["head.weight"], initial.state_dict()["head.weight"]
    )
