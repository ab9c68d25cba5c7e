"""The training loop: accumulation, clipping, early stopping, checkpoints, NaN, precision, hooks."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mlsmith.config import TrainConfig
from mlsmith.data.batches import BatchOptions, TensorBatches
from mlsmith.errors import ConfigError, MlsmithError
from mlsmith.tasks import BinaryTask, MulticlassTask, RegressionTask
from mlsmith.training.checkpoint import BEST, LAST, load_checkpoint
from mlsmith.training.precision import BF16Mixed
from mlsmith.training.trainer import NonFiniteLossError, Trainer, predict_raw

N_FEATURES = 5


class Net(nn.Module):
    """A small MLP without batch norm; ``forward(x=...)`` as the trainer calls it."""

    def __init__(self, dropout: float = 0.0, n_outputs: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(N_FEATURES, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, n_outputs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def make_net(seed: int = 0, **options: Any) -> Net:
    torch.manual_seed(seed)
    return Net(**options)


def regression_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    y = (x @ np.linspace(-1.0, 1.0, N_FEATURES) + 0.1 * rng.normal(size=n)).astype(np.float32)
    return x, y


def binary_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x, y = regression_data(n, seed)
    return x, (y > 0).astype(np.float32)


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, **options: Any) -> TensorBatches:
    return TensorBatches({"x": x}, y, BatchOptions(batch_size, **options))


def train_config(**overrides: Any) -> TrainConfig:
    """Plain SGD on the CPU, no early stopping, unless overridden (nested dicts merge)."""
    base: dict[str, Any] = {
        "epochs": 1,
        "batch_size": 32,
        "device": "cpu",
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0},
        "early_stopping": {"enabled": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return TrainConfig.model_validate(base)


def fit(
    tmp: Path,
    model: nn.Module,
    config: TrainConfig,
    train: TensorBatches,
    val: TensorBatches,
    objective: Any = None,
    **options: Any,
) -> tuple[Trainer, Any]:
    trainer = Trainer(config, checkpoint_dir=tmp, callbacks=options.pop("callbacks", ()))
    result = trainer.fit(model, train, val, objective or RegressionTask(0.0, 1.0), **options)
    return trainer, result


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_states_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def states_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


# --- gradient accumulation --------------------------------------------------------------------


@pytest.mark.parametrize("n", [256, 300], ids=["divides-evenly", "partial-last-step"])
def test_grad_accumulation_matches_one_big_batch(tmp_path: Path, n: int) -> None:
    """4 x 32 accumulated is the same update as 1 x 128, normalised by the true sample count.

    With 300 rows the last optimizer step holds 44 samples (micro-batches of 32 and 12): an
    implementation dividing by the 4 configured micro-batches instead would not match.
    """
    x, y = regression_data(n)
    val = batches(*regression_data(40, seed=1), 64)
    base = make_net()
    runs = {}
    for name, batch_size, accum in (("accum", 32, 4), ("big", 128, 1), ("small", 32, 1)):
        config = train_config(epochs=2, batch_size=batch_size, grad_accum_steps=accum)
        trainer, _ = fit(
            tmp_path / name, copy.deepcopy(base), config, batches(x, y, batch_size), val
        )
        runs[name] = (trainer, weights(tmp_path / name / LAST))

    accum_trainer, accum_weights = runs["accum"]
    big_trainer, big_weights = runs["big"]
    assert accum_trainer.global_step == big_trainer.global_step == 2 * -(-n // 128)
    assert_states_close(accum_weights, big_weights)
    assert accum_trainer.history[-1]["train/loss"] == pytest.approx(
        big_trainer.history[-1]["train/loss"], rel=1e-5
    )
    # The comparison is sensitive: plain batches of 32 take 4x the steps and end elsewhere.
    assert not states_close(runs["small"][1], big_weights)


def test_grad_accumulation_with_drop_last_skips_the_partial_step(tmp_path: Path) -> None:
    x, y = regression_data(300)
    val = batches(*regression_data(40, seed=1), 64)
    base = make_net()
    config = train_config(batch_size=32, grad_accum_steps=4)
    train = batches(x, y, 32, drop_last=True)
    accum_trainer, _ = fit(tmp_path / "a", copy.deepcopy(base), config, train, val)
    # Only the first 256 rows in two full steps: the same as one batch of 128 over them.
    config = train_config(batch_size=128)
    fit(tmp_path / "b", copy.deepcopy(base), config, batches(x[:256], y[:256], 128), val)
    assert accum_trainer.global_step == 2
    assert_states_close(weights(tmp_path / "a" / LAST), weights(tmp_path / "b" / LAST))


# --- gradient clipping ------------------------------------------------------------------------


def full_batch_gradient(model: nn.Module, x: np.ndarray, y: np.ndarray) -> list[torch.Tensor]:
    model = copy.deepcopy(model)
    loss = RegressionTask(0.0, 1.0).loss(model(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def global_norm(tensors: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([t.norm() for t in tensors])))


@pytest.mark.parametrize("ratio", [0.25, 4.0], ids=["clipped", "under-the-cap"])
def test_grad_clip_caps_the_global_norm(tmp_path: Path, ratio: float) -> None:
    """One SGD step of lr 1 moves the weights by exactly the (clipped) gradient."""
    x, y = regression_data(64)
    model = make_net()
    before = [p.detach().clone() for p in model.parameters()]
    grad = full_batch_gradient(model, x, y)
    norm = global_norm(grad)
    assert norm > 0.1
    clip = ratio * norm
    config = train_config(batch_size=64, grad_clip=clip, optimizer={"lr": 1.0})
    fit(tmp_path, model, config, batches(x, y, 64), batches(x, y, 64))

    update = [b - p.detach() for b, p in zip(before, model.parameters(), strict=True)]
    scale = min(1.0, clip / norm)
    assert global_norm(update) == pytest.approx(min(clip, norm), rel=1e-4)
    for step, g in zip(update, grad, strict=True):
        torch.testing.assert_close(step, g * scale, rtol=1e-4, atol=1e-6)


# --- history, early stopping, best and last ---------------------------------------------------


def test_history_rows_have_every_column(tmp_path: Path) -> None:
    task = BinaryTask(["no", "yes"])
    x, y = binary_data(200)
    config = train_config(epochs=3, batch_size=50)
    _, result = fit(
        tmp_path, make_net(), config, batches(x, y, 50), batches(*binary_data(60, 1), 64), task
    )
    expected = {
        "epoch",
        "step",
        "train/loss",
        "val/loss",
        "lr",
        "samples_per_s",
        *(f"val/{m}" for m in task.metric_names),
    }
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert [row["step"] for row in result.history] == [4, 8, 12]
    for row in result.history:
        assert expected <= row.keys()
        assert np.isfinite(row["train/loss"]) and np.isfinite(row["val/loss"])
        assert 0.0 <= row["val/accuracy"] <= 1.0
        assert row["lr"] == pytest.approx(0.05)
        assert row["samples_per_s"] > 0
    # The loss falls on this learnable problem, and the val loss is the mean per sample.
    assert result.history[-1]["train/loss"] < result.history[0]["train/loss"]
    assert result.history[-1]["val/log_loss"] == pytest.approx(
        result.history[-1]["val/loss"], rel=1e-4
    )


class ScriptedScore(RegressionTask):
    """A regression objective whose one validation metric follows a fixed script."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__(0.0, 1.0)
        self.scores = list(scores)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return ("score",)

    def metrics(self, truth: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
        return {"score": self.scores.pop(0)}


class WeightSnapshots:
    """Copies the model's weights at every epoch end (after that epoch's checkpoints)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.states: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        self.states.append({k: v.clone() for k, v in self.model.state_dict().items()})


def assert_states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_early_stopping_best_and_last_checkpoints(tmp_path: Path) -> None:
    """Score peaks at epoch 2, then 2 epochs without improvement stop a 6-epoch run at 4."""
    objective = ScriptedScore([0.1, 0.5, 0.3, 0.4, 0.2, 0.9])
    model = make_net()
    snapshots = WeightSnapshots(model)
    config = train_config(
        epochs=6,
        checkpoint={"monitor": "val/score"},
        early_stopping={"enabled": True, "monitor": "val/score", "patience": 2},
    )
    x, y = regression_data(96)
    trainer, result = fit(
        tmp_path,
        model,
        config,
        batches(x, y, 32),
        batches(x, y, 32),
        objective,
        callbacks=[snapshots],
    )
    assert [row["val/score"] for row in result.history] == [0.1, 0.5, 0.3, 0.4]
    assert result.stopped_early and trainer.should_stop
    assert (result.best_epoch, result.best_score) == (2, 0.5)
    assert result.best_checkpoint == tmp_path / BEST

    best, last = load_checkpoint(tmp_path / BEST), load_checkpoint(tmp_path / LAST)
    assert best["epoch"] == 2 and best["metrics"]["val/score"] == 0.5
    assert_states_equal(best["model"], snapshots.states[1])
    assert last["epoch"] == 4 and last["metrics"]["epoch"] == 4
    assert_states_equal(last["model"], snapshots.states[3])
    assert last["loop"]["should_stop"] is True
    assert last["early_stopping"] == {"best": 0.5, "bad_epochs": 2}
    # fit() hands back the best weights, not the last.
    assert_states_equal(model.state_dict(), snapshots.states[1])
    assert not states_close(snapshots.states[1], snapshots.states[3])


def test_early_stopping_on_real_val_loss_with_min_delta(tmp_path: Path) -> None:
    """No epoch improves val/loss by more than 10: stop after exactly `patience` more epochs."""
    x, y = regression_data(96)
    config = train_config(
        epochs=10, early_stopping={"enabled": True, "patience": 3, "min_delta": 10.0}
    )
    _, result = fit(tmp_path, make_net(), config, batches(x, y, 32), batches(x, y, 32))
    assert len(result.history) == 4
    assert result.stopped_early
    assert load_checkpoint(tmp_path / LAST)["early_stopping"]["bad_epochs"] == 3


def test_early_stopping_disabled_runs_every_epoch(tmp_path: Path) -> None:
    x, y = regression_data(96)
    config = train_config(epochs=5, early_stopping={"patience": 1, "min_delta": 10.0})
    _, result = fit(tmp_path, make_net(), config, batches(x, y, 32), batches(x, y, 32))
    assert len(result.history) == 5
    assert not result.stopped_early


@pytest.mark.parametrize("key", ["checkpoint", "early_stopping"])
def test_unknown_monitor_is_rejected_before_training(tmp_path: Path, key: str) -> None:
    model = make_net()
    before = copy.deepcopy(model.state_dict())
    config = train_config(**{key: {"monitor": "val/acuracy"}})
    x, y = binary_data(64)
    trainer = Trainer(config, checkpoint_dir=tmp_path / "ckpt")
    with pytest.raises(ConfigError) as error:
        trainer.fit(model, batches(x, y, 32), batches(x, y, 32), BinaryTask(["no", "yes"]))
    message = str(error.value)
    assert f"train.{key}.monitor" in message
    assert "did you mean 'val/accuracy'" in message
    assert "val/roc_auc" in message  # lists what is available
    assert not (tmp_path / "ckpt").exists()
    assert trainer.global_step == 0
    assert_states_equal(model.state_dict(), before)


# --- non-finite losses ------------------------------------------------------------------------


def test_nan_in_inputs_raises_a_clear_error(tmp_path: Path) -> None:
    x, y = regression_data(96)
    x[40, 2] = np.nan
    config = train_config(epochs=3)
    with pytest.raises(NonFiniteLossError) as error:
        fit(tmp_path, make_net(), config, batches(x, y, 32), batches(*regression_data(32), 32))
    message = str(error.value)
    # Row 40 is in the second batch of 32: caught at step 2, before its update.
    assert "stopped at step 2 (epoch 1): the loss became nan at learning rate 0.05" in message
    assert "first non-finite gradients in: body.0.weight" in message
    assert "No checkpoint had been written yet" in message
    assert "train.optimizer.lr" in message and "train.grad_clip" in message
    assert isinstance(error.value, MlsmithError) and error.value.exit_code == 1
    assert not (tmp_path / LAST).exists()


def test_huge_learning_rate_raises_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    """Epoch 1 still ends finite; epoch 2 diverges and names epoch 1's last.pt."""
    x, y = regression_data(96)
    config = train_config(epochs=20, optimizer={"lr": 1e6})
    trainer = Trainer(config, checkpoint_dir=tmp_path)
    with pytest.raises(NonFiniteLossError) as error:
        trainer.fit(make_net(), batches(x, y, 32), batches(x, y, 32), RegressionTask(0.0, 1.0))
    message = str(error.value)
    # 3 steps per epoch: the first step of epoch 2 is step 4; the diagnosis names the LR and
    # the parameters whose gradients went first.
    assert "stopped at step 4 (epoch 2): the loss became inf at learning rate 1e+06" in message
    assert "first non-finite gradients in: body.0.weight, body.0.bias" in message
    assert f"The last good checkpoint, {tmp_path / LAST}, is intact" in message
    assert "try 1e+05" in message
    state = load_checkpoint(tmp_path / LAST)
    assert state["loop"]["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_weights_blowing_up_on_a_finite_loss_are_caught(tmp_path: Path) -> None:
    """The loss is computed before the step, so it can be finite while the step it drives
    makes the weights infinite: nothing non-finite may be checkpointed as the last good one."""
    x, y = regression_data(64)
    config = train_config(epochs=3, batch_size=64, optimizer={"lr": 1e38})
    with pytest.raises(NonFiniteLossError, match="weights became non-finite in epoch 1"):
        fit(tmp_path, make_net(), config, batches(x, y * 1e3, 64), batches(x, y, 64))
    assert not (tmp_path / LAST).exists() and not (tmp_path / BEST).exists()


def test_nan_mid_epoch_never_reaches_the_mid_epoch_checkpoint(tmp_path: Path) -> None:
    """With every_n_steps, the checkpoint named in the error still holds finite weights."""
    x, y = regression_data(320)
    x[250, 0] = np.nan  # step 16 of 20 with batches of 16
    config = train_config(batch_size=16, checkpoint={"every_n_steps": 2})
    with pytest.raises(NonFiniteLossError, match=r"last good checkpoint, .*last\.pt, is intact"):
        fit(tmp_path, make_net(), config, batches(x, y, 16), batches(x[:32], y[:32], 16))
    state = load_checkpoint(tmp_path / LAST)
    assert state["loop"]["step_in_epoch"] == 14
    assert all(torch.isfinite(t).all() for t in state["model"].values())


# --- prediction -------------------------------------------------------------------------------


def test_predict_raw_gathers_batches_on_the_cpu(tmp_path: Path) -> None:
    model = make_net(n_outputs=3)
    x, _ = regression_data(103)
    target = np.arange(103) % 3
    task = MulticlassTask(["a", "b", "c"])
    small, small_loss = predict_raw(model, batches(x, target, 7), None, task)
    big, big_loss = predict_raw(model, batches(x, target, 1000), None, task)
    assert isinstance(small, np.ndarray) and isinstance(big, np.ndarray)
    assert small.dtype == np.float32 and small.shape == (103, 3)
    np.testing.assert_allclose(small, big, rtol=1e-5, atol=1e-6)
    assert small_loss == pytest.approx(big_loss, rel=1e-5)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(big, expected, rtol=1e-5, atol=1e-6)
    expected_loss = float(
        torch.nn.functional.cross_entropy(torch.from_numpy(expected), torch.from_numpy(target))
    )
    assert big_loss == pytest.approx(expected_loss, rel=1e-5)
    assert not model.training  # evaluation mode: dropout would make outputs random


def test_predict_raw_without_an_objective_and_without_rows() -> None:
    model = make_net()
    x, _ = regression_data(10)
    raw, loss = predict_raw(model, TensorBatches({"x": x}, None, BatchOptions(4)))
    assert raw.shape == (10, 1) and loss == 0.0
    empty, _ = predict_raw(model, TensorBatches({"x": x[:0]}, None, BatchOptions(4)))
    assert empty.shape == (0, 1)


# --- precision --------------------------------------------------------------------------------


def test_bf16_mixed_trains_on_cpu(tmp_path: Path) -> None:
    x, y = regression_data(128)
    model = make_net()
    before = copy.deepcopy(model.state_dict())
    config = train_config(epochs=2, precision="bf16-mixed", optimizer={"lr": 0.1})
    trainer, result = fit(tmp_path, model, config, batches(x, y, 32), batches(x, y, 64))
    assert isinstance(trainer.precision, BF16Mixed)
    assert all(np.isfinite(row["train/loss"]) for row in result.history)
    assert result.history[-1]["train/loss"] < result.history[0]["train/loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not states_close(model.state_dict(), before)


def test_fp16_mixed_on_cpu_falls_back_to_bf16_with_a_warning(tmp_path: Path) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("mlsmith.training.precision")
    logger.addHandler(handler)
    try:
        trainer = Trainer(train_config(precision="16-mixed"), checkpoint_dir=tmp_path)
    finally:
        logger.removeHandler(handler)
    assert trainer.precision.name == "bf16-mixed"
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "16-mixed needs a CUDA GPU" in warnings[0] and "bf16-mixed" in warnings[0]
    x, y = regression_data(64)
    result = trainer.fit(make_net(), batches(x, y, 32), batches(x, y, 32), RegressionTask(0, 1))
    assert np.isfinite(result.history[0]["train/loss"])


# --- callbacks --------------------------------------------------------------------------------


def test_callback_with_a_single_hook_is_enough(tmp_path: Path) -> None:
    class StopAfterTwo:  # no base class, only one hook
        def __init__(self) -> None:
            self.epochs: list[float] = []

        def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
            self.epochs.append(row["epoch"])
            trainer.should_stop = trainer.epoch >= 2

    class CountSteps:
        steps = 0

        def on_train_step_end(self, trainer: Trainer) -> None:
            CountSteps.steps += 1

    x, y = regression_data(96)
    stopper = StopAfterTwo()
    _, result = fit(
        tmp_path,
        make_net(),
        train_config(epochs=5),
        batches(x, y, 32),
        batches(x, y, 32),
        callbacks=[stopper, CountSteps()],
    )
    assert stopper.epochs == [1, 2]
    assert CountSteps.steps == 6
    assert result.stopped_early and len(result.history) == 2


def test_on_exception_sees_the_error(tmp_path: Path) -> None:
    seen: list[BaseException] = []

    class Boom:
        def on_train_step_end(self, trainer: Trainer) -> None:
            raise RuntimeError("boom")

    class Watcher:
        def on_exception(self, trainer: Trainer, error: BaseException) -> None:
            seen.append(error)

    x, y = regression_data(64)
    with pytest.raises(RuntimeError, match="boom"):
        fit(
            tmp_path,
            make_net(),
            train_config(),
            batches(x, y, 32),
            batches(x, y, 32),
            callbacks=[Boom(), Watcher()],
        )
    assert len(seen) == 1 and str(seen[0]) == "boom"


# --- exact resume in process ------------------------------------------------------------------


class Crash(Exception):
    pass


class CrashAt:
    """Simulates a crash: raises after optimizer step ``step`` (its checkpoint is not written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_step_end(self, trainer: Trainer) -> None:
        if trainer.global_step == self.step:
            raise Crash


@pytest.mark.parametrize(
    ("scheduler", "accum", "crash_at", "ema"),
    [
        ("cosine", 1, 26, None),
        ("onecycle", 2, 14, None),
        ("plateau", 3, 11, None),
        ("step", 1, 45, None),
        ("cosine", 2, 20, 0.9),
    ],
)
def test_resume_mid_epoch_is_bit_identical(
    tmp_path: Path, scheduler: str, accum: int, crash_at: int, ema: float | None
) -> None:
    """Shuffling, dropout, a warmup schedule and AdamW: resuming from a mid-epoch last.pt ends
    with exactly the weights and history of a run that was never interrupted (and with
    train.ema, the same moving average: best.pt holds it)."""
    x, y = regression_data(150)
    config = train_config(
        epochs=4,
        batch_size=8,
        grad_accum_steps=accum,
        optimizer={"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
        scheduler={"name": scheduler, "warmup_epochs": 0.5, "step_size": 1, "patience": 0},
        checkpoint={"every_n_steps": 3},
        early_stopping={"enabled": True, "patience": 2},
        ema=ema,
    )
    val = regression_data(40, seed=1)

    def run(directory: Path, crash: int | None = None, resume: Path | None = None) -> Any:
        model = make_net(dropout=0.3)
        callbacks = [CrashAt(crash)] if crash else []
        torch.manual_seed(123)  # the dropout stream; a resume must restore it itself
        train = batches(x, y, 8, shuffle=True, seed=7)
        trainer = Trainer(config, checkpoint_dir=directory, callbacks=callbacks)
        result = trainer.fit(model, train, batches(*val, 16), RegressionTask(0, 1), resume=resume)
        return result, model

    reference, ref_model = run(tmp_path / "ref")
    with pytest.raises(Crash):
        run(tmp_path / "crash", crash=crash_at)
    partial = load_checkpoint(tmp_path / "crash" / LAST)
    assert partial["loop"]["step_in_epoch"] > 0  # really mid-epoch...
    assert partial["loop"]["epoch"] >= 1  # ...after the shuffle generator moved on an epoch
    torch.manual_seed(999)  # a different global RNG state: resume must not depend on it
    resumed, resumed_model = run(tmp_path / "crash", resume=tmp_path / "crash" / LAST)

    assert_states_equal(weights(tmp_path / "ref" / LAST), weights(tmp_path / "crash" / LAST))
    assert_states_equal(weights(tmp_path / "ref" / BEST), weights(tmp_path / "crash" / BEST))
    assert_states_equal(ref_model.state_dict(), resumed_model.state_dict())
    timing = {"samples_per_s", "epoch_time_s", "memory_mb"}
    strip = [{k: v for k, v in row.items() if k not in timing} for row in reference.history]
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed.history] == strip
    assert resumed.best_epoch == reference.best_epoch
    if ema is not None:
        ref_last, resumed_last = (
            load_checkpoint(tmp_path / "ref" / LAST),
            load_checkpoint(tmp_path / "crash" / LAST),
        )
        assert_states_equal(ref_last["ema"]["model"], resumed_last["ema"]["model"])
        assert (
            ref_last["ema"]["updates"]
            == resumed_last["ema"]["updates"]
            == ref_last["loop"]["global_step"]
        )
