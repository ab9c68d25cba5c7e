"""What the trainer watches while it runs: gradient norms per step, NaN diagnosis, overfitting."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.training.test_trainer import (
    N_FEATURES,
    batches,
    fit,
    make_net,
    regression_data,
    train_config,
)
from torch import nn

from mlsmith.tasks import RegressionTask
from mlsmith.training.checkpoint import LAST, load_checkpoint
from mlsmith.training.diagnostics import (
    NonFiniteLossError,
    OverfitWatch,
    StepMonitor,
    gradient_norms,
    peak_memory_mb,
)
from mlsmith.training.trainer import Trainer


def test_step_rows_record_lr_loss_and_the_pre_clip_gradient_norm(tmp_path: Path) -> None:
    x, y = regression_data(96)
    config = train_config(epochs=2, grad_clip=0.01, scheduler={"name": "cosine"})
    trainer, result = fit(tmp_path, make_net(), config, batches(x, y, 32), batches(x, y, 32))
    rows = trainer.step_rows
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [int(r[1]) for r in rows] == [1, 1, 1, 2, 2, 2]
    lrs = [r[2] for r in rows]
    assert lrs[0] == pytest.approx(0.05) and lrs == sorted(lrs, reverse=True)  # cosine decays
    assert all(math.isfinite(r[3]) and r[3] > 0 for r in rows)
    # Norms are taken before clipping: far above the 0.01 cap on this untrained net.
    assert all(r[4] > 0.05 for r in rows)
    for epoch, row in enumerate(result.history, start=1):
        norms = [r[4] for r in rows if r[1] == epoch]
        assert row["grad_norm"] == pytest.approx(sum(norms) / len(norms))
        assert row["grad_norm_max"] == pytest.approx(max(norms))
        assert row["memory_mb"] > 0


def test_the_logged_step_loss_is_the_loss_the_update_used(tmp_path: Path) -> None:
    """Full-batch SGD: the first step's loss is the untrained model's loss on all rows."""
    x, y = regression_data(64)
    model = make_net()
    with torch.no_grad():
        expected = float(
            nn.functional.mse_loss(model(torch.from_numpy(x)).squeeze(1), torch.from_numpy(y))
        )
    config = train_config(batch_size=64, grad_accum_steps=2)
    trainer, _ = fit(tmp_path, model, config, batches(x, y, 32), batches(x, y, 64))
    assert len(trainer.step_rows) == 1
    assert trainer.step_rows[0][3] == pytest.approx(expected, rel=1e-5)


def test_clipping_from_logged_norms_matches_clip_grad_norm(tmp_path: Path) -> None:
    """The trainer reuses the norms it logs to clip; the update must equal torch's own."""
    x, y = regression_data(32)
    config = train_config(grad_clip=0.05)
    model = make_net()
    reference = make_net()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.0, weight_decay=0.0)
    loss = nn.functional.mse_loss(reference(torch.from_numpy(x)).squeeze(1), torch.from_numpy(y))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05)
    optimizer.step()
    fit(tmp_path, model, config, batches(x, y, 32), batches(x, y, 32))
    for (name, a), b in zip(
        model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_grad_norm_logging_can_be_turned_off(tmp_path: Path) -> None:
    x, y = regression_data(64)
    config = train_config(log_grad_norm=False)
    trainer, result = fit(tmp_path, make_net(), config, batches(x, y, 32), batches(x, y, 32))
    assert all(math.isnan(r[4]) for r in trainer.step_rows)
    assert "grad_norm" not in result.history[0]


class Exploding(nn.Module):
    """Finite loss, but one layer's gradient is infinite: the diagnosis must name that layer."""

    def __init__(self) -> None:
        super().__init__()
        self.healthy = nn.Linear(N_FEATURES, 1)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # d/dscale of sqrt(scale - 1) at scale == 1 is infinite; the value itself is 0.
        return self.healthy(x) + torch.sqrt(self.scale - 1.0)


def test_non_finite_gradients_with_a_finite_loss_name_the_layer(tmp_path: Path) -> None:
    x, y = regression_data(64)
    torch.manual_seed(0)
    model = Exploding()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteLossError) as error:
        fit(tmp_path, model, train_config(), batches(x, y, 32), batches(x, y, 32))
    message = str(error.value)
    assert "training stopped at step 1 (epoch 1): the gradients became non-finite" in message
    assert "first non-finite gradients in: scale" in message
    assert "healthy" not in message.split("first non-finite gradients in:")[1].split(".")[0]
    # Caught before the update: the weights are untouched.
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_fp16_scaled_steps_tolerate_overflowing_gradients() -> None:
    """Under a GradScaler an overflow skips one update; only a non-finite loss is an error."""
    monitor = StepMonitor(["w"], torch.device("cpu"), scaled=True)
    monitor.record(1, 1, 0.1, torch.tensor(0.5), torch.tensor([math.inf]))
    monitor.flush()
    assert monitor.rows[0][4] == math.inf
    monitor.record(2, 1, 0.1, torch.tensor(math.nan), torch.tensor([1.0]))
    with pytest.raises(NonFiniteLossError, match="the loss became nan"):
        monitor.flush()


def test_steps_survive_a_resume(tmp_path: Path) -> None:
    x, y = regression_data(96)
    config = train_config(epochs=2)
    reference, _ = fit(tmp_path / "a", make_net(), config, batches(x, y, 32), batches(x, y, 32))
    fit(tmp_path / "b", make_net(), train_config(epochs=1), batches(x, y, 32), batches(x, y, 32))
    resumed, _ = fit(
        tmp_path / "b",
        make_net(),
        config,
        batches(x, y, 32),
        batches(x, y, 32),
        resume=tmp_path / "b" / LAST,
    )
    assert len(resumed.step_rows) == 6
    assert [r[:4] for r in resumed.step_rows] == [r[:4] for r in reference.step_rows]
    assert "steps" in load_checkpoint(tmp_path / "b" / LAST)


def test_gradient_norms_are_zero_for_parameters_without_a_gradient() -> None:
    model = nn.Linear(3, 1)
    model(torch.ones(2, 3)).sum().backward()
    unused = nn.Parameter(torch.ones(4))
    norms = gradient_norms([model.weight, unused, model.bias])
    assert norms.tolist() == pytest.approx([math.sqrt(3 * 4), 0.0, 2.0])


# --- overfitting ------------------------------------------------------------------------------


def test_overfit_watch_needs_patience_epochs_in_a_row() -> None:
    watch = OverfitWatch(patience=2)
    assert watch.update(1, 1.0, 1.0) is None
    assert watch.update(2, 0.9, 1.1) is None  # one diverging epoch
    assert watch.update(3, 0.8, 1.0) is None  # val improved: streak reset
    assert watch.update(4, 0.7, 1.2) is None
    note = watch.update(5, 0.6, 1.3)
    assert note is not None and "epochs 4-5" in note
    assert watch.update(6, 0.5, 1.4) is None  # said once per streak
    assert OverfitWatch(patience=0).update(2, 0.1, 9.0) is None


def test_memorising_noise_raises_the_overfitting_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Pure-noise targets: a wide net memorises the train rows while val loss climbs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, N_FEATURES)).astype(np.float32)
    y = rng.normal(size=32).astype(np.float32)
    xv = rng.normal(size=(64, N_FEATURES)).astype(np.float32)
    yv = rng.normal(size=64).astype(np.float32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(N_FEATURES, 256), nn.ReLU(), nn.Linear(256, 1))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    config = train_config(epochs=60, overfit_patience=3, optimizer={"name": "adam", "lr": 0.01})
    trainer = Trainer(config, checkpoint_dir=tmp_path)
    with caplog.at_level("WARNING", logger="mlsmith"):
        result = trainer.fit(
            Net(), batches(x, y, 32), batches(xv, yv, 64), RegressionTask(0.0, 1.0)
        )
    assert result.observations, [(r["train/loss"], r["val/loss"]) for r in result.history]
    assert (
        "overfitting: validation loss rose while training loss fell for 3 epochs"
        in (result.observations[0])
    )
    assert any("overfitting" in r.getMessage() for r in caplog.records)


def test_peak_memory_is_reported_on_the_cpu() -> None:
    assert peak_memory_mb(torch.device("cpu")) > 10


def test_rows_of_epoch_reads_only_the_tail() -> None:
    from mlsmith.training.diagnostics import rows_of_epoch

    rows = [
        (float(s), float(e), 0.1, 1.0, 1.0) for s, e in [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3)]
    ]
    assert [r[0] for r in rows_of_epoch(rows, 2)] == [3.0, 4.0]
    assert [r[0] for r in rows_of_epoch(rows, 3)] == [5.0]
    assert rows_of_epoch(rows, 4) == [] and rows_of_epoch([], 1) == []


def test_all_finite_is_exact_even_where_a_norm_overflows() -> None:
    from mlsmith.training.diagnostics import all_finite

    weights = [torch.randn(64, 64), torch.randn(64)]
    assert all_finite(weights) and all_finite([])
    for bad in (float("nan"), float("inf"), float("-inf")):
        broken = [w.clone() for w in weights]
        broken[1][3] = bad
        assert not all_finite(broken)
    # Finite values whose float32 norm overflows: the fast path says no, the exact check yes.
    huge = [torch.full((16,), 3e38)]
    assert not bool(torch.linalg.vector_norm(huge[0]).isfinite())
    assert all_finite(huge)


class _DeviceFull:
    """Raises the error PyTorch raises when CUDA cannot allocate, at one step."""

    def on_train_step_end(self, trainer: Trainer) -> None:
        if trainer.global_step == 3:
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total capacity)"
                "\nlong allocator statistics that nobody reads"
            )


def test_out_of_memory_is_a_diagnosis_with_what_to_change(tmp_path: Path) -> None:
    """Out of device memory mid-training: one message naming where it happened, the memory
    used and the settings to change (not the allocator's trace); exit code 1."""
    from mlsmith.training.diagnostics import OutOfMemoryError

    x, y = regression_data(64)
    config = train_config(epochs=2, batch_size=8)
    trainer = Trainer(config, checkpoint_dir=tmp_path, callbacks=[_DeviceFull()])
    with pytest.raises(OutOfMemoryError) as caught:
        trainer.fit(make_net(), batches(x, y, 8), batches(x, y, 16), RegressionTask(0.0, 1.0))
    message = str(caught.value)
    assert message.startswith("cpu ran out of memory in epoch 1, step 4 (")
    assert "CUDA out of memory. Tried to allocate 2.00 GiB" in message
    assert "allocator statistics" not in message  # the first line of torch's message only
    assert "lower train.batch_size (now 8) and raise train.grad_accum_steps (now 1)" in message
    assert "train.precision=bf16-mixed" in message
    assert caught.value.exit_code == 1
    assert isinstance(caught.value.__cause__, torch.cuda.OutOfMemoryError)
