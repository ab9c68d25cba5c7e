"""Samplers and pruners: the config's ``tune.sampler`` and ``tune.pruner`` as Optuna objects."""

from __future__ import annotations

import importlib.util
import logging
import math
import warnings
from typing import TYPE_CHECKING, Any

from mlsmith.config import CategoricalParam, IntParam, TuneConfig
from mlsmith.errors import ConfigError

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


def build_sampler(tune: TuneConfig, seed: int) -> optuna.samplers.BaseSampler:
    """``tpe`` (the default), ``random``, ``gp``, ``cmaes`` or ``grid``, seeded with ``seed``."""
    import optuna

    if tune.sampler == "grid":
        # The grid's points are queued as the trials' fixed params (grid_points): nothing is
        # left to sample, and workers on other machines share the one queue.
        grid_space(tune)  # a key without values is a ConfigError before any trial
        return optuna.samplers.RandomSampler(seed=seed)
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


def grid_points(tune: TuneConfig, seed: int) -> list[dict[str, Any]]:
    """Every combination of the grid's values (:func:`grid_space`), in an order shuffled with
    ``seed``, so a budget smaller than the grid samples it evenly."""
    import itertools
    import random

    grid = grid_space(tune)
    keys = list(grid)
    points = [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]
    random.Random(seed).shuffle(points)
    log.info("tune: a grid of %d points; tune.trials %d", len(points), tune.trials)
    if tune.trials < len(points):
        log.warning(
            "tune.sampler grid: %d trials cover %d of the grid's %d points; raise tune.trials "
            "to %d for all of them",
            tune.trials,
            tune.trials,
            len(points),
            len(points),
        )
    return points


def grid_space(tune: TuneConfig) -> dict[str, list[Any]]:
    """The grid of every ``tune.space`` key: categorical choices (as the trial encodes them),
    an int range by its step, a float range by its step (a ConfigError for a float without a
    step, or a log scale: a grid needs values)."""
    from mlsmith.tuning.space import encoded_choices

    grid: dict[str, list[Any]] = {}
    for key, param in tune.space.items():
        if isinstance(param, CategoricalParam):
            grid[key] = encoded_choices(param)
        elif param.log:
            raise ConfigError(
                f"tune.space.{key}: a grid needs values, not a log scale; list them as "
                "categorical choices, or use another tune.sampler"
            )
        elif isinstance(param, IntParam):
            grid[key] = list(range(param.low, param.high + 1, param.step))
        elif param.step is None:
            raise ConfigError(
                f"tune.space.{key}: tune.sampler grid needs a step for a float range (e.g. "
                "step: 0.1), or categorical choices"
            )
        else:
            count = math.floor((param.high - param.low) / param.step + 1e-9) + 1
            grid[key] = [round(param.low + i * param.step, 12) for i in range(count)]
    return grid


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
