"""Samplers and pruners: the config's ``tune.sampler`` and ``tune.pruner`` as Optuna objects."""

from __future__ import annotations

import importlib.util
import warnings
from typing import TYPE_CHECKING

from mlsmith.config import TuneConfig
from mlsmith.errors import ConfigError

if TYPE_CHECKING:
    import optuna


def build_sampler(tune: TuneConfig, seed: int) -> optuna.samplers.BaseSampler:
    """``tpe`` (the default), ``random``, ``gp`` or ``cmaes``, seeded with ``seed``."""
    import optuna

    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if tune.sampler == "cmaes":
        if importlib.util.find_spec("cmaes") is None:
            raise ConfigError(
                "tune.sampler: cmaes needs the 'cmaes' package, which is not installed "
                "(pip install cmaes); or use tpe, random or gp"
            )
        return optuna.samplers.CmaEsSampler(seed=seed)
    if tune.sampler == "gp":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def build_pruner(tune: TuneConfig, epochs: int) -> optuna.pruners.BasePruner:
    """``median`` (the default), ``hyperband`` over ``epochs``, or ``none``."""
    import optuna

    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    if tune.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_epochs
    )
