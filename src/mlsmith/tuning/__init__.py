"""Hyperparameter search with Optuna: the only package that imports optuna.

``space`` reads the config's ``tune`` section and turns sampled values into configs; ``trial``
runs one trial (train with a pruning callback); ``study`` owns the storage, the exact trial
budget across worker processes, the outputs (``best.yaml``, the report) and MLflow.
"""

from mlsmith.tuning.space import apply_params, best_config, decode_params, suggest, tune_section
from mlsmith.tuning.study import TrialRecord, TuneResult, run_study
from mlsmith.tuning.trial import PruningCallback, run_trial

__all__ = [
    "PruningCallback",
    "TrialRecord",
    "TuneResult",
    "apply_params",
    "best_config",
    "decode_params",
    "run_study",
    "run_trial",
    "suggest",
    "tune_section",
]
