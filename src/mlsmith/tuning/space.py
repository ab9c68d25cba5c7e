"""The search space: the config's ``tune`` section, sampled values, and configs built from them."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from mlsmith.config import (
    CategoricalParam,
    Config,
    CustomConfig,
    FloatParam,
    SearchParam,
    SklearnConfig,
    TuneConfig,
    load_config,
)
from mlsmith.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    import optuna


log = logging.getLogger(__name__)

EXAMPLE = """tune:
  metric: val/loss
  trials: 20
  space:
    train.optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    model.hidden: {type: categorical, choices: [[128], [256, 128]]}"""


# --- the search space -------------------------------------------------------------------------


def tune_section(cfg: Config) -> TuneConfig:
    """The config's ``tune`` section, its keys checked against the config."""
    if cfg.tune is None:
        raise ConfigError(f"tune needs a 'tune' section in the config, for example:\n{EXAMPLE}")
    known = [k for k in cfg.flat() if not k.startswith("tune.") and k != "tune"]
    # An estimator's or your network's constructor arguments (model.type sklearn, custom) are
    # open-ended: any name.
    open_keys = ("model.params.",) if isinstance(cfg.model, SklearnConfig | CustomConfig) else ()
    for key in cfg.tune.space:
        if key.startswith(open_keys) and len(key) > len("model.params."):
            continue
        if key not in known or key.startswith(("track.", "tune")):
            raise ConfigError(
                f"tune.space: '{key}' is not a config key{did_you_mean(key, known)}; "
                "use a dotted path such as train.optimizer.lr"
            )
    if cfg.tune.objective == "cv" and cfg.eval.cv is None:
        raise ConfigError(
            "tune.objective: cv optimises the cross-validation mean, which needs eval.cv "
            "(e.g. eval.cv.folds=5); set it, or use tune.objective=val"
        )
    return cfg.tune


def _encode(value: Any) -> Any:
    """Optuna's categorical choices must be None/bool/int/float/str: lists become JSON text."""
    return (
        value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)
    )


def suggest(trial: optuna.Trial, key: str, param: SearchParam) -> Any:
    """Sample one config value for ``key``."""
    if isinstance(param, FloatParam):
        return trial.suggest_float(key, param.low, param.high, log=param.log, step=param.step)
    if isinstance(param, CategoricalParam):
        encoded = {_encode(c): c for c in param.choices}
        return encoded[trial.suggest_categorical(key, list(encoded))]
    return trial.suggest_int(key, param.low, param.high, log=param.log, step=param.step)


def encoded_choices(param: CategoricalParam) -> list[Any]:
    """A categorical param's choices as a trial stores them (lists as JSON text)."""
    return list({_encode(c): c for c in param.choices})


def decode_params(space: dict[str, SearchParam], params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's stored params back to config values (JSON text back to lists)."""
    out = {}
    for key, value in params.items():
        param = space.get(key)
        if isinstance(param, CategoricalParam):
            value = {_encode(c): c for c in param.choices}.get(value, value)
        out[key] = value
    return out


def apply_params(
    cfg: Config, params: dict[str, Any], extra: dict[str, Any] | None = None
) -> Config:
    """``cfg`` with dotted keys set to values (validated: an invalid mix is a ConfigError)."""
    raw = cfg.to_dict()
    if params.get("model.type", raw["model"]["type"]) != raw["model"]["type"]:
        # Another family: the base config's model settings are the old family's keys.
        raw["model"] = {}
    for key, value in {**params, **(extra or {})}.items():
        node = raw
        *sections, leaf = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return load_config(raw)


def best_config(cfg: Config, params: dict[str, Any]) -> Config:
    """The base config with the best params and without the tune section: ``mlsmith train``
    on it reproduces the best trial."""
    return apply_params(cfg, params, {"tune": None})
