"""Hyperparameter search with Optuna: the only package that imports optuna.

``space`` reads the config's ``tune`` section and turns sampled values into configs;
``storage`` opens the study's database and its lock across processes; ``trial_queue`` keeps the
exact budget as queued trials, claimed one at a time and re-queued when interrupted;
``samplers`` builds the sampler and pruner; ``trial`` runs one trial (train with a pruning
callback); ``results`` turns the trials into records, ``best.yaml`` and the report;
``parent_run`` is the study's MLflow run; ``study`` is the loop that ties them together.
"""

from mlsmith.tuning.results import TrialRecord, TuneResult
from mlsmith.tuning.space import apply_params, best_config, decode_params, suggest, tune_section
from mlsmith.tuning.study import run_study
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
