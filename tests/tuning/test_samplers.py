"""tune.sampler and tune.pruner as Optuna objects."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from tests.tuning.tune_data import LR_SPACE, tune_config

from mlsmith.config import TuneConfig, load_config
from mlsmith.errors import ConfigError
from mlsmith.tuning.samplers import build_pruner, build_sampler


def _tune(tmp_path: Path, **tune: Any) -> TuneConfig:
    section = load_config(tune_config(tmp_path, {"train.optimizer.lr": LR_SPACE}, **tune)).tune
    assert section is not None
    return section


@pytest.mark.parametrize(
    ("sampler", "kind"), [("tpe", "TPESampler"), ("random", "RandomSampler"), ("gp", "GPSampler")]
)
def test_samplers(tmp_path: Path, sampler: str, kind: str) -> None:
    assert type(build_sampler(_tune(tmp_path, sampler=sampler), seed=3)).__name__ == kind


def test_cmaes_without_its_package_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cmaes" else find_spec(name)
    )
    with pytest.raises(ConfigError, match="pip install cmaes"):
        build_sampler(_tune(tmp_path, sampler="cmaes"), seed=0)


def test_pruners(tmp_path: Path) -> None:
    import optuna

    median = build_pruner(_tune(tmp_path, startup_trials=5, warmup_epochs=2), epochs=10)
    assert isinstance(median, optuna.pruners.MedianPruner)
    hyperband = build_pruner(_tune(tmp_path, pruner="hyperband"), epochs=10)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    nop = build_pruner(_tune(tmp_path, pruner="none"), epochs=10)
    assert isinstance(nop, optuna.pruners.NopPruner)


def test_a_grid_runs_every_combination_once_then_stops(tmp_path: Path) -> None:
    import mlsmith

    space = {
        "model.hidden": {"type": "categorical", "choices": [[4], [8, 4]]},
        "train.batch_size": {"type": "int", "low": 16, "high": 48, "step": 16},
    }
    cfg = tune_config(tmp_path, space, sampler="grid", trials=10)
    cfg["train"]["epochs"] = 1
    result = mlsmith.tune(load_config(cfg))
    finished = [t for t in result.trials if t.state in ("COMPLETE", "PRUNED")]
    # 2 x 3 points, each once; the study stops when the grid is done, before 10 trials.
    assert len(finished) == 6
    seen = {(str(t.params["model.hidden"]), t.params["train.batch_size"]) for t in finished}
    assert seen == {(h, b) for h in ("[4]", "[8, 4]") for b in (16, 32, 48)}


def test_a_grid_needs_values_for_every_key(tmp_path: Path) -> None:
    from mlsmith.tuning.samplers import grid_space

    with pytest.raises(ConfigError, match="a grid needs values, not a log scale"):
        build_sampler(_tune(tmp_path, sampler="grid"), seed=0)
    stepped = _tune(tmp_path, sampler="grid")
    unstepped = stepped.space["train.optimizer.lr"].model_copy(update={"log": False})
    with pytest.raises(ConfigError, match="needs a step for a float range"):
        grid_space(stepped.model_copy(update={"space": {"train.optimizer.lr": unstepped}}))
    stepped.space["train.optimizer.lr"] = stepped.space["train.optimizer.lr"].model_copy(
        update={"log": False, "step": 0.25, "low": 0.25, "high": 1.0}
    )
    assert grid_space(stepped) == {"train.optimizer.lr": [0.25, 0.5, 0.75, 1.0]}
