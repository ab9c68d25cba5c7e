"""Dropout under data parallelism: each rank draws its own masks, and the update is exactly the
one a single process computes when it replays the ranks' shares with the ranks' streams.

Two gloo ranks (two forked processes, started once for every case) train a network with
dropout through the real :class:`~mlsmith.training.trainer.Trainer`, under DDP and FSDP, with
and without gradient accumulation. The reference, in this process, walks the same steps: for
each rank in turn it restores that rank's RNG stream (rank 0: the seed; rank k: seed + k, as the
Trainer seeds it), runs the rank's micro-batches through the network, and weights each
micro-batch's mean loss by its share of the global batch; one backward pass and one update per
step.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mlsmith.config import TrainConfig
from mlsmith.data.batches import BatchOptions, TensorBatches
from mlsmith.tasks import RegressionTask
from mlsmith.training.checkpoint import LAST, load_checkpoint

pytestmark = pytest.mark.timeout(180)

WORLD = 2
SEED = 123  # the global RNG seed each rank sets before fitting (the dropout stream)
ROWS, FEATURES, EPOCHS, GLOBAL_BATCH = 160, 6, 2, 64  # steps of 64, 64 and 32 rows
# (strategy, per-rank batch, accumulation): per-rank batch x accumulation x 2 ranks = 64.
CASES = [("ddp", 32, 1), ("ddp", 16, 2), ("fsdp", 32, 1), ("fsdp", 16, 2)]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(FEATURES, 32),
        nn.Tanh(),
        nn.Dropout(0.3),
        nn.Linear(32, 16),
        nn.Tanh(),
        nn.Dropout(0.3),
        nn.Linear(16, 1),
    )


class _Net(nn.Module):
    """``forward(x=...)``, as the Trainer calls a network."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, FEATURES)).astype(np.float32)
    return x, (x @ np.linspace(-1, 1, FEATURES)).astype(np.float32)


def _config(strategy: str, batch: int, accumulate: int) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "epochs": EPOCHS,
            "batch_size": batch,
            "grad_accum_steps": accumulate,
            "device": "cpu",
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0},
            "early_stopping": {"enabled": False},
            "distributed": {"strategy": strategy},
        }
    )


def _batches(batch: int) -> TensorBatches:
    x, y = _data()
    return TensorBatches({"x": x}, y, BatchOptions(batch, shuffle=False))


# -- The ranks' side ---------------------------------------------------------------------------


def _rank(rank: int, store: str, root: str) -> None:
    from mlsmith.training.trainer import Trainer

    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD
    )
    try:
        for strategy, batch, accumulate in CASES:
            model = _Net()
            torch.manual_seed(SEED)
            trainer = Trainer(
                _config(strategy, batch, accumulate),
                checkpoint_dir=Path(root) / f"{strategy}-{batch}x{accumulate}",
            )
            trainer.fit(model, _batches(batch), _batches(64), RegressionTask(0.0, 1.0))
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every case trained by two gloo ranks; returns the folder of their checkpoints."""
    root = tmp_path_factory.mktemp("dropout")
    # Forked rather than spawned: the ranks start with what this process has imported (a
    # spawned rank spends seconds importing it again), so import first what they use: the
    # Trainer, and torch._dynamo, which torch imports on building the first optimizer. Each
    # rank sets one thread before any work, as DataLoader workers forked the same way do.
    # Python 3.12+ warns about any fork of a process with threads (torch's), which the suite's
    # filterwarnings makes an error.
    import torch._dynamo

    import mlsmith.training.trainer  # noqa: F401

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "This process .* use of fork", DeprecationWarning)
        torch.multiprocessing.start_processes(
            _rank, args=(str(root / "store"), str(root)), nprocs=WORLD, start_method="fork"
        )
    return root


# -- The reference -----------------------------------------------------------------------------


def _replay(batch: int, accumulate: int, streams: list[int]) -> dict[str, torch.Tensor]:
    """One process walking the ranks' shares of every step with the ranks' RNG streams."""
    model, loss_fn = _Net(), RegressionTask(0.0, 1.0).loss
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.0, weight_decay=0.0)
    states = []
    for seed in streams:
        torch.manual_seed(seed)
        states.append(torch.get_rng_state())
    shares = [_batches(batch).shard(rank, WORLD) for rank in range(WORLD)]
    plans = [share.micro_batches(accumulate) for share in shares]
    data = shares[0]
    model.train()
    for _ in range(EPOCHS):
        for step in range(len(plans[0])):
            total = data.step_total(accumulate, step)
            loss = torch.zeros(())
            for rank in range(WORLD):
                torch.set_rng_state(states[rank])
                for lo, hi in plans[rank][step]:
                    out = model(x=data.inputs["x"][lo:hi])
                    loss = loss + loss_fn(out, data.target[lo:hi]) * ((hi - lo) / total)
                states[rank] = torch.get_rng_state()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.state_dict()


@pytest.mark.parametrize(("strategy", "batch", "accumulate"), CASES)
def test_dropout_on_two_ranks_is_one_process_replaying_the_ranks_streams(
    trained: Path, strategy: str, batch: int, accumulate: int
) -> None:
    actual = load_checkpoint(trained / f"{strategy}-{batch}x{accumulate}" / LAST)["model"]
    expected = _replay(batch, accumulate, [SEED, SEED + 1])
    assert actual.keys() == expected.keys()
    for key in actual:
        assert torch.allclose(actual[key], expected[key], rtol=0, atol=1e-6), (
            key,
            (actual[key] - expected[key]).abs().max(),
        )
    # The masks matter: both ranks drawing rank 0's masks would have trained other weights.
    same_masks = _replay(batch, accumulate, [SEED, SEED])
    assert any(not torch.allclose(actual[k], same_masks[k], atol=1e-4) for k in actual)
