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
