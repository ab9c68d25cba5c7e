"""Imbalanced classes end to end: class weights and the balanced sampler help the minority, the
sampler resumes exactly, the decision threshold is chosen on val and used everywhere, and bad
settings are clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from tests.conftest import config_dict
from tests.training.test_trainer import (
    Crash,
    CrashAt,
    assert_states_equal,
    make_net,
    train_config,
    weights,
)

import mlsmith
from mlsmith.data.batches import BalancedSampler, BatchOptions, TensorBatches
from mlsmith.errors import ConfigError
from mlsmith.evaluation import choose_threshold, classification_metrics, confusion
from mlsmith.imbalance import class_weights
from mlsmith.runtime.outputs import Decoder
from mlsmith.runtime.package import package_format
from mlsmith.serving.models import Answer
from mlsmith.tasks import BinaryTask, MulticlassTask
from mlsmith.training.checkpoint import BEST, LAST, load_checkpoint
from mlsmith.training.trainer import Trainer

ROWS = 600
# Enough epochs at a learning rate where the unweighted network settles on the majority.
TRAIN = {"epochs": 6, "batch_size": 64, "optimizer": {"lr": 0.02}, "preflight": False}


def imbalanced_table(kind: str, rows: int = ROWS, seed: int = 0) -> pd.DataFrame:
    """About 90/10 (binary: common/rare) or 8/84/8 (multiclass: lo/mid/hi) from a noisy score."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    score = 1.5 * x1 - x2 + rng.normal(size=rows)
    if kind == "binary":
        label = np.where(score > np.quantile(score, 0.9), "rare", "common")
    else:
        high, low = score > np.quantile(score, 0.92), score < np.quantile(score, 0.08)
        label = np.where(high, "hi", np.where(low, "lo", "mid"))
    return pd.DataFrame({"x1": x1, "x2": x2, "label": label})


def train(data: Path, root: Path, *, train: dict[str, Any] | None = None, **sections: Any) -> Any:
    sections.setdefault("eval", {"bootstrap": 0, "report": False})
    cfg = config_dict(data, root / "runs", train={**TRAIN, **(train or {})}, **sections)
    return mlsmith.train(cfg)


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("imbalance")
    paths = {}
    for kind, seed in (("binary", 2), ("multiclass", 0)):
        paths[kind] = root / f"{kind}.csv"
        imbalanced_table(kind, seed=seed).to_csv(paths[kind], index=False)
    return paths


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_class_weights_and_the_balanced_sampler_raise_balanced_accuracy(
    tables: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    """On a 90/10 table the plain loss favours the majority; weighting the loss or balancing
    the draws each lifts balanced accuracy (and the minority's recall) on the test split."""
    scores = {}
    for name, options in (
        ("none", {}),
        ("weights", {"class_weights": "auto"}),
        ("sampler", {"sampler": "balanced"}),
    ):
        run = train(tables[kind], tmp_path / name, train=options)
        scores[name] = run.metrics["test"]["balanced_accuracy"]["value"]
        noted = any("class weights in the loss" in note for note in run.info["observations"])
        assert noted == (name == "weights")
    assert scores["weights"] > scores["none"] + 0.05, scores
    assert scores["sampler"] > scores["none"] + 0.05, scores


def test_auto_class_weights_are_sklearns_balanced_rule() -> None:
    task = MulticlassTask(["a", "b", "c", "d"])
    target = np.array([0] * 6 + [1] * 3 + [2] * 1)  # 'd' has no training row
    weights = class_weights("auto", task, target)
    # n / (k * count) with k = 3 classes present.
    assert weights == pytest.approx((10 / 18, 10 / 9, 10 / 3, 0.0))
    assert np.mean(np.asarray(weights)[target]) == pytest.approx(1.0)
    assert class_weights("none", task, target) is None
    mapped = class_weights({"d": 1.0, "a": 0.5, "b": 2.0, "c": 3.0}, task, target)
    assert mapped == (0.5, 2.0, 3.0, 1.0)


def test_class_weight_labels_match_the_data_as_written() -> None:
    """Integer labels are written as YAML integers or strings; both name the class."""
    task = BinaryTask([0, 1])
    assert class_weights({"0": 1.0, "1": 9.0}, task, np.array([0, 1])) == (1.0, 9.0)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"a": 1.0, "b": 1.0, "z": 2.0}, "unknown class label(s) 'z'; known labels: a, b, c"),
        ({"a": 1.0, "b": 1.0}, "no weight for class(es) 'c'; give one for every class: a, b, c"),
    ],
)
def test_class_weights_with_unknown_or_missing_labels_name_the_known_ones(
    mapping: dict[str, float], message: str
) -> None:
    with pytest.raises(ConfigError, match=r"train\.class_weights") as error:
        class_weights(mapping, MulticlassTask(["a", "b", "c"]), np.array([0, 1, 2]))
    assert message in str(error.value)


# --- the balanced sampler ---------------------------------------------------------------------


def test_balanced_sampler_draws_every_class_equally_often() -> None:
    target = np.array([0] * 900 + [1] * 90 + [2] * 10, dtype=np.int64)
    sampler = BalancedSampler(target)
    drawn = sampler.draw(30_000, torch.Generator().manual_seed(0))
    counts = np.bincount(target[drawn.numpy()], minlength=3)
    assert np.all(np.abs(counts / 30_000 - 1 / 3) < 0.02), counts
    # Every row of the rare class is drawn, each many times.
    assert set(drawn[target[drawn.numpy()] == 2].tolist()) == set(range(990, 1000))


def test_balanced_batches_keep_the_epoch_size_and_repeat_from_the_generator_state() -> None:
    x = np.arange(100, dtype=np.float32)[:, None]
    y = (np.arange(100) >= 90).astype(np.float32)
    batches = TensorBatches({"x": x}, y, BatchOptions(16, shuffle=True, seed=3, balanced=True))
    start = batches.generator.get_state()
    first = torch.cat([b[1] for step in batches.steps() for b in step])
    assert len(first) == 100 and batches.n_steps() == 7
    assert 35 <= int(first.sum()) <= 65  # about half the rows are of the 10% class
    batches.generator.set_state(start)
    again = torch.cat([b[1] for step in batches.steps() for b in step])
    assert torch.equal(first, again)
    # Training options from the config turn it on; evaluation batches never sample.
    cfg = train_config(sampler="balanced")
    assert BatchOptions.training(cfg, 0).balanced and not BatchOptions.evaluation(cfg).balanced


def test_balanced_text_batches_stay_length_bucketed() -> None:
    """Text batches bucket the sampler's draw by length like a shuffle: same epoch size, classes
    balanced, each batch's texts of similar length."""
    from mlsmith.data.text import TextBatches

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 50, size=400).astype(np.int32)
    inputs = {"input_ids": np.ones((400, 50), dtype=np.int32), "lengths": lengths}
    target = (np.arange(400) % 10 == 0).astype(np.int64)  # 10% class 1
    batches = TextBatches(inputs, target, BatchOptions(16, shuffle=True, seed=1, balanced=True))
    drawn = batches.permutation(400)
    assert len(drawn) == 400 and 150 <= int(target[drawn.numpy()].sum()) <= 250
    spread = [np.ptp(lengths[drawn[i : i + 16].numpy()]) for i in range(0, 400, 16)]
    assert np.mean(spread) < 25  # a random batch of 1..49 spans about 44


def test_resume_mid_epoch_with_the_balanced_sampler_is_bit_identical(tmp_path: Path) -> None:
    """The sampler draws from the batches' generator, which the Trainer rewinds: a run crashed
    mid-epoch and resumed ends with exactly the weights and history of an uninterrupted one."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 5)).astype(np.float32)
    y = (x[:, 0] > 1.2).astype(np.float32)  # about 12% positive
    task = BinaryTask(["no", "yes"])
    config = train_config(
        epochs=3,
        batch_size=8,
        sampler="balanced",
        optimizer={"name": "adamw", "lr": 0.01},
        checkpoint={"every_n_steps": 3},
    )

    def run(directory: Path, crash: int | None = None, resume: Path | None = None) -> Any:
        model = make_net(dropout=0.3)
        torch.manual_seed(123)
        train = TensorBatches({"x": x}, y, BatchOptions.training(config, seed=7))
        val = TensorBatches({"x": x[:40]}, y[:40], BatchOptions(16))
        callbacks = [CrashAt(crash)] if crash else []
        trainer = Trainer(config, checkpoint_dir=directory, callbacks=callbacks)
        return trainer.fit(model, train, val, task, resume=resume)

    reference = run(tmp_path / "ref")
    with pytest.raises(Crash):
        run(tmp_path / "crash", crash=26)
    assert load_checkpoint(tmp_path / "crash" / LAST)["loop"]["step_in_epoch"] > 0
    torch.manual_seed(999)
    resumed = run(tmp_path / "crash", resume=tmp_path / "crash" / LAST)
    assert_states_equal(weights(tmp_path / "ref" / LAST), weights(tmp_path / "crash" / LAST))
    assert_states_equal(weights(tmp_path / "ref" / BEST), weights(tmp_path / "crash" / BEST))
    timing = {"samples_per_s", "epoch_time_s", "memory_mb"}
    strip = [{k: v for k, v in row.items() if k not in timing} for row in reference.history]
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed.history] == strip


# --- the decision threshold -------------------------------------------------------------------


def test_choose_threshold_maximises_f1_or_reaches_the_recall() -> None:
    truth = np.array([0, 0, 0, 1, 0, 0, 1, 0, 1, 1])
    proba = np.array([0.05, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.6, 0.9])
    # At 0.4: tp 3, fp 1, fn 1 -> F1 0.75, the best cut (0.25 keeps every positive: 0.727).
    assert choose_threshold(truth, proba, "f1") == 0.4
    assert choose_threshold(truth, proba, "recall", target_recall=0.5) == 0.6
    assert choose_threshold(truth, proba, "recall", target_recall=0.75) == 0.4
    assert choose_threshold(truth, proba, "recall", target_recall=1.0) == 0.25
    assert choose_threshold(np.zeros(3), proba[:3], "f1") is None


def test_thresholded_metrics_keep_the_ranking_metrics() -> None:
    truth = np.array([0, 0, 1, 1, 0, 1])
    positive = np.array([0.1, 0.2, 0.3, 0.4, 0.45, 0.8])
    proba = np.column_stack([1 - positive, positive])
    plain = classification_metrics(truth, proba)
    low = classification_metrics(truth, proba, threshold=0.3)
    assert plain["recall_macro"] < low["recall_macro"]
    assert (plain["roc_auc"], plain["log_loss"]) == (low["roc_auc"], low["log_loss"])
    assert confusion(truth, proba, 0.3) == [[2, 1], [0, 3]]


@pytest.fixture(scope="module")
def thresholded(tables: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A binary run whose threshold is chosen on val to reach 95% recall of the rare class
    (which takes a threshold well below 0.5)."""
    root = tmp_path_factory.mktemp("threshold")
    eval_ = {"bootstrap": 50, "report": False, "threshold": "auto", "threshold_for": "recall"}
    eval_["target_recall"] = 0.95
    return train(tables["binary"], root, train={"epochs": 3}, eval=eval_)


def test_auto_threshold_is_chosen_on_val_and_recorded(thresholded: Any) -> None:
    run = thresholded
    record = run.info["threshold"]
    assert record["chosen_on"] == "val"
    assert (record["objective"], record["target_recall"]) == ("recall", 0.95)
    value = record["value"]
    assert 0.0 < value < 0.5
    assert any(
        note.startswith(f"decision threshold {value:.4g} for 'rare'")
        for note in run.info["observations"]
    )
    assert run.metrics["test"]["threshold"] == record
    assert run.metrics["val"]["threshold"] == record
    preprocessing = json.loads((run.path / "preprocessing.json").read_text())
    assert preprocessing["task"]["threshold"] == value
    # The test metrics use it: its confusion matrix counts p >= threshold as 'rare'.
    predictions = pd.read_csv(run.path / "test_predictions.csv")
    expected = np.where(predictions["proba_rare"] >= value, "rare", "common")
    assert (predictions["prediction"] == expected).all()
    matrix = json.loads((run.path / "confusion_matrix.json").read_text())["test"]["matrix"]
    assert matrix[1][1] == int(((predictions["target"] == "rare") & (expected == "rare")).sum())


def test_predict_uses_the_threshold(
    thresholded: Any, tables: Any, cli: Any, tmp_path: Path
) -> None:
    """A row whose probability lies between the threshold and 0.5 is predicted 'rare', by
    Run.predict, a reloaded run, `mlsmith predict` and the package's decoder (what `serve`
    answers with)."""
    run = thresholded
    value = run.info["threshold"]["value"]
    frame = pd.read_csv(tables["binary"])
    predicted = run.predict(frame)
    between = (predicted["proba_rare"] >= value) & (predicted["proba_rare"] < 0.5)
    assert between.sum() > 0
    assert (predicted.loc[between, "prediction"] == "rare").all()
    reloaded = mlsmith.load_run(run.path).predict(frame)
    assert (reloaded["prediction"] == predicted["prediction"]).all()
    # `mlsmith predict`, chunk by chunk.
    output = tmp_path / "predictions.csv"
    result = cli("predict", run.path, "--input", tables["binary"], "--output", output)
    assert result.code == 0, result.stderr
    assert (pd.read_csv(output)["prediction"] == predicted["prediction"]).all()

    state = json.loads((run.path / "preprocessing.json").read_text())
    # A package of this task says format 2, which runtimes that ignore thresholds refuse.
    assert package_format(state["task"]) == 2
    assert package_format({"kind": "binary", "classes": ["a", "b"]}) == 1
    decoder = Decoder(state["task"])
    p = predicted["proba_rare"].to_numpy()
    raw = np.log(p / (1 - p))[:, None]  # the logits the network would output
    assert (decoder.frame(raw)["prediction"] == predicted["prediction"]).all()

    class Served:  # what Answer.decode reads of a loaded package
        classes = decoder.classes

    Served.decoder = decoder  # type: ignore[attr-defined]
    answer = Answer.decode(Served, raw)  # type: ignore[arg-type]
    assert (answer.labels == predicted["prediction"].to_numpy()).all()


def test_a_fixed_threshold_is_used_and_recorded(tables: dict[str, Path], tmp_path: Path) -> None:
    run = train(tables["binary"], tmp_path, train={"epochs": 2}, eval={"threshold": 0.3})
    assert run.info["threshold"] == {"value": 0.3, "chosen_on": "config"}
    predicted = run.predict(pd.read_csv(tables["binary"]))
    expected = np.where(predicted["proba_rare"] >= 0.3, "rare", "common")
    assert (predicted["prediction"] == expected).all()


# --- bad settings -------------------------------------------------------------------------------


def test_settings_round_trip_through_the_resolved_config(tmp_path: Path) -> None:
    """What config.yaml stores (and --resume compares) reloads to the same settings."""
    from mlsmith.config import load_config

    raw = config_dict("data.csv", tmp_path)
    raw["train"] |= {"class_weights": {0: 1, 1: 9.5}, "loss": "focal", "label_smoothing": 0.1}
    raw["eval"] |= {"threshold": "auto", "threshold_for": "recall", "target_recall": 0.8}
    config = load_config(raw)
    assert config.train.class_weights == {"0": 1.0, "1": 9.5}
    reloaded = load_config(yaml.safe_load(config.to_yaml()))
    assert reloaded == config and reloaded.flat() == config.flat()
    assert load_config(raw, ["eval.threshold=0.25"]).eval.threshold == 0.25


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.class_weights=heavy", "train.class_weights: expected 'none', 'auto' or a mapping"),
        ("train.class_weights={rare: -1}", "train.class_weights: the weight of class 'rare'"),
        ("train.class_weights={rare: 9}", "no weight for class(es) 'common'"),
        ("train.class_weights={rare: 9, common: 1, other: 2}", "unknown class label(s) 'other'"),
        ("train.sampler=oversample", "train.sampler: expected 'none' or 'balanced'"),
        ("train.loss=dice", "train.loss: unknown loss 'dice'"),
        ("train.focal_gamma=-1", "train.focal_gamma"),
        ("train.label_smoothing=1.0", "train.label_smoothing"),
        ("eval.threshold=1.2", "eval.threshold: expected a probability between 0 and 1"),
        ("eval.threshold_for=precision", "eval.threshold_for"),
        ("eval.target_recall=0", "eval.target_recall"),
    ],
)
def test_bad_values_exit_2_naming_the_key(
    cli: Any, tables: dict[str, Path], write_config: Any, override: str, message: str
) -> None:
    config = write_config(tables["binary"])
    result = cli("train", config, override)
    assert result.code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.class_weights=auto", "train.class_weights"),
        ("train.sampler=balanced", "train.sampler"),
        ("train.loss=focal", "train.loss"),
        ("train.label_smoothing=0.1", "train.label_smoothing"),
        ("eval.threshold=auto", "eval.threshold"),
    ],
)
def test_classification_settings_on_a_regression_exit_2(
    cli: Any, table_csv: Any, write_config: Any, override: str, key: str
) -> None:
    config = write_config(table_csv("regression"))
    result = cli("train", config, override)
    assert result.code == 2
    assert f"{key}: " in result.stderr and "regression" in result.stderr


def test_training_settings_on_boosted_trees_exit_2(
    cli: Any, tables: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("lightgbm")
    settings = config_dict(tables["binary"], tmp_path / "runs")
    settings["model"] = {"type": "lightgbm", "n_estimators": 5}
    config = tmp_path / "trees.yaml"
    config.write_text(json.dumps(settings))
    result = cli("train", config, "train.class_weights=auto")
    assert result.code == 2
    assert "train.class_weights: applies to the torch families only" in result.stderr


def test_threshold_on_a_multiclass_task_exits_2(
    cli: Any, tables: dict[str, Path], write_config: Any
) -> None:
    result = cli("train", write_config(tables["multiclass"]), "eval.threshold=0.3")
    assert result.code == 2
    assert "eval.threshold: a decision threshold applies to binary tasks only" in result.stderr
