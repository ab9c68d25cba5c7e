"""The search space: dotted keys checked against the config, list choices round-tripped."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import config_dict
from tests.tuning.tune_data import LR_SPACE, tune_config

from mlsmith.config import load_config
from mlsmith.errors import ConfigError


def test_space_keys_and_ranges_are_checked(tmp_path: Path) -> None:
    from mlsmith.tuning import tune_section

    cfg = load_config(tune_config(tmp_path, {"train.optimzer.lr": LR_SPACE}))
    with pytest.raises(
        ConfigError, match=r"train\.optimzer\.lr.*did you mean 'train\.optimizer\.lr'"
    ):
        tune_section(cfg)
    with pytest.raises(ConfigError, match="low must be < high"):
        load_config(tune_config(tmp_path, {"train.optimizer.lr": {"low": 1.0, "high": 0.1}}))
    with pytest.raises(ConfigError, match="log needs low > 0"):
        load_config(
            tune_config(
                tmp_path, {"train.batch_size": {"type": "int", "low": 0, "high": 8, "log": True}}
            )
        )
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(
            tune_config(
                tmp_path, {"train.batch_size": {"type": "int", "low": 1, "high": 8, "stp": 2}}
            )
        )
    no_tune = config_dict(tmp_path / "data.csv", tmp_path / "runs")
    with pytest.raises(ConfigError, match="needs a 'tune' section"):
        tune_section(load_config(no_tune))


def test_list_choices_round_trip(tmp_path: Path) -> None:
    import optuna

    from mlsmith.tuning import apply_params, decode_params, suggest

    space = {"model.hidden": {"type": "categorical", "choices": [[8], [16, 8], None]}}
    cfg = load_config(tune_config(tmp_path, space))
    param = cfg.tune.space["model.hidden"]  # type: ignore[union-attr]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(12):
        trial = study.ask()
        value = suggest(trial, "model.hidden", param)
        assert value in ([8], [16, 8], None)
        assert decode_params(cfg.tune.space, trial.params)["model.hidden"] == value  # type: ignore[union-attr]
        study.tell(trial, 0.0)
        seen.append(value)
    assert [8] in seen and [16, 8] in seen
    assert apply_params(cfg, {"model.hidden": [16, 8]}).model.hidden == [16, 8]  # type: ignore[union-attr]


def test_a_trial_that_switches_the_model_type_drops_the_old_family_s_settings() -> None:
    from mlsmith.config import load_config
    from mlsmith.tuning.space import apply_params

    cfg = load_config(
        {"data": {"path": "sklearn:iris", "target": "target"}, "model": {"type": "lightgbm"}}
    )
    switched = apply_params(cfg, {"model.type": "xgboost", "model.max_depth": 3})
    assert switched.model.type == "xgboost" and switched.model.max_depth == 3
    same = apply_params(cfg, {"model.type": "lightgbm", "model.num_leaves": 7})
    assert same.model.num_leaves == 7 and same.model.n_estimators == cfg.model.n_estimators
