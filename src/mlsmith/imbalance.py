"""Imbalanced classes: the ``train`` settings that reach the task's loss and the sampler, and the
binary decision threshold of ``eval.threshold``.

:func:`configure_task` runs once the task is known (``build``): it checks every setting against
the task (a mapping's labels against the classes, classification-only keys against a regression)
and sets the task's loss options and a fixed threshold. :func:`fit_threshold` runs after training
and, for ``eval.threshold: auto``, picks the threshold on the validation split; the task carries
it from then on (saved in ``preprocessing.json``), so the run's test metrics, ``predict``, the
package and ``serve`` all decide labels with it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.config.base import is_user_path
from mlsmith.errors import ConfigError
from mlsmith.losses import LossOptions
from mlsmith.tasks import ClassificationTask
from mlsmith.user_code import load_function

if TYPE_CHECKING:
    from mlsmith.config import Config, TrainConfig
    from mlsmith.data.base import Split
    from mlsmith.models.base import Model
    from mlsmith.tasks import Task

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5


def training_settings(train: TrainConfig) -> list[str]:
    """The imbalance keys of ``train`` set away from their defaults, as ``train.<key>`` names."""
    changed = {
        "class_weights": train.class_weights != "none",
        "sampler": train.sampler != "none",
        "loss": train.loss == "focal",
        "label_smoothing": train.label_smoothing != 0.0,
    }
    return [f"train.{key}" for key, on in changed.items() if on]


def configure_task(cfg: Config, task: Task, train_target: np.ndarray, model: Model) -> None:
    """Check the imbalance settings against ``task`` and ``model``; set the task's loss options
    and fixed decision threshold. Raises ConfigError naming the key."""
    from mlsmith.models.neural import NeuralModel

    asked = training_settings(cfg.train)
    if asked and not task.is_classification:
        raise ConfigError(
            f"{asked[0]}: applies to classification only, but the task is {task.kind} "
            f"(target '{cfg.data.target}'); remove it or set data.task"
        )
    if asked and not isinstance(model, NeuralModel):
        raise ConfigError(
            f"{asked[0]}: applies to the torch families only, not model.type "
            f"'{cfg.model.type}'; remove it for this model"
        )
    threshold = cfg.eval.threshold
    if threshold != DEFAULT_THRESHOLD and task.kind != "binary":
        raise ConfigError(
            f"eval.threshold: a decision threshold applies to binary tasks only, but the task is "
            f"{task.kind} (target '{cfg.data.target}'); remove eval.threshold"
        )
    task.threshold = threshold if isinstance(threshold, float) and threshold != 0.5 else None
    configure_loss(cfg.train, task, train_target)
    if is_user_path(cfg.train.loss):
        if not isinstance(model, NeuralModel):
            raise ConfigError(
                f"train.loss: your loss trains the torch families only, not model.type "
                f"'{cfg.model.type}'; remove it for this model"
            )
        task.custom_loss = load_function(
            cfg.train.loss, "train.loss", "a loss function (output, target) -> loss"
        )


def configure_loss(train: TrainConfig, task: Task, train_target: np.ndarray) -> None:
    """Set a classification task's loss options (class weights, focal, smoothing) from
    ``train``; a regression task's loss has none."""
    if not isinstance(task, ClassificationTask):
        return
    weights = class_weights(train.class_weights, task, train_target)
    if weights is not None:
        log.info(
            "class weights: %s",
            ", ".join(f"{c}={w:.3g}" for c, w in zip(task.classes, weights, strict=True)),
        )
    task.loss_options = LossOptions(
        weights=weights,
        focal_gamma=train.focal_gamma if train.loss == "focal" else None,
        label_smoothing=train.label_smoothing,
    )


def class_weights(
    setting: str | dict[str, float], task: ClassificationTask, train_target: np.ndarray
) -> tuple[float, ...] | None:
    """One loss weight per class, in the task's class order; None for ``none``.

    ``auto`` is scikit-learn's "balanced" rule on the training split, ``n / (k * count)`` with
    ``k`` the classes present there, so the weights average 1 over the training rows; a class
    with no training row has no row to weigh and gets 0. A mapping names every class by its
    label as written in the data.
    """
    if setting == "none":
        return None
    if setting == "auto":
        counts = np.bincount(np.asarray(train_target).astype(np.int64), minlength=len(task.classes))
        present = counts > 0
        balanced = len(train_target) / (int(present.sum()) * np.maximum(counts, 1))
        return tuple(float(w) for w in np.where(present, balanced, 0.0))
    assert isinstance(setting, dict)
    known = ", ".join(str(c) for c in task.classes)
    unknown = [label for label in setting if task.class_index(label) is None]
    if unknown:
        raise ConfigError(
            f"train.class_weights: unknown class label(s) {', '.join(map(repr, unknown))}; "
            f"known labels: {known}"
        )
    given = {task.class_index(label): weight for label, weight in setting.items()}
    missing = [str(c) for i, c in enumerate(task.classes) if i not in given]
    if missing:
        raise ConfigError(
            f"train.class_weights: no weight for class(es) {', '.join(map(repr, missing))}; "
            f"give one for every class: {known}"
        )
    return tuple(float(given[i]) for i in range(len(task.classes)))


def fit_threshold(cfg: Config, model: Model, val: Split) -> dict[str, Any] | None:
    """Set the binary task's decision threshold after training; what run.json records of it.

    ``eval.threshold: auto`` chooses it on ``val`` (the validation split); a number was already
    set by :func:`configure_task`. None for the default (the most probable class).
    """
    from mlsmith.evaluation import choose_threshold

    task, setting = model.task, cfg.eval
    if task.kind != "binary" or setting.threshold == DEFAULT_THRESHOLD:
        return None
    if setting.threshold != "auto":
        return {"value": task.threshold, "chosen_on": "config"}
    objective: dict[str, Any] = {"objective": setting.threshold_for}
    if setting.threshold_for == "recall":
        objective["target_recall"] = setting.target_recall
    proba = model.predict(val.inputs)
    chosen = choose_threshold(
        task.truth(val.target), proba[:, 1], setting.threshold_for, setting.target_recall
    )
    if chosen is None:
        log.warning(
            "eval.threshold=auto: the validation split has no row of the positive class '%s' "
            "to choose a threshold on; keeping %s",
            task.classes[1],
            DEFAULT_THRESHOLD,
        )
        task.threshold = None
        return {"value": DEFAULT_THRESHOLD, "chosen_on": "default", **objective}
    task.threshold = chosen
    log.info(
        "decision threshold %.4g, chosen on the validation split (%s)",
        chosen,
        setting.threshold_for,
    )
    return {"value": chosen, "chosen_on": "val", **objective}


def imbalance_notes(task: Task, threshold: dict[str, Any] | None) -> list[str]:
    """One-line facts for the report: the class weights the loss used, the decision threshold."""
    notes = []
    weights = task.loss_options.weights if isinstance(task, ClassificationTask) else None
    if weights is not None:
        pairs = ", ".join(f"{c} {w:.3g}" for c, w in zip(task.classes, weights, strict=True))
        notes.append(f"class weights in the loss: {pairs}")
    if threshold is not None and threshold["chosen_on"] != "default":
        where = {"val": "chosen on the validation split", "config": "set by eval.threshold"}
        objective = threshold.get("objective")
        goal = {"f1": " (best F1)", "recall": f" (recall >= {threshold.get('target_recall')})"}
        goal_text = goal.get(objective, "") if objective else ""
        notes.append(
            f"decision threshold {threshold['value']:.4g} for '{task.classes[1]}', "
            f"{where[threshold['chosen_on']]}{goal_text}: test metrics and predictions use it"
        )
    return notes
