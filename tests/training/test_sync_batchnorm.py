"""SyncBatchNorm on the CPU: plain batch norm in one process, the global batch's statistics
over two real gloo processes.

The two-process tests share one start of two forked ranks (module fixture ``ranks``): each rank runs
every case on its share of a 64-row batch and saves what it computed; the tests compare that
with one process and plain ``nn.BatchNorm`` on all 64 rows.
"""

from __future__ import annotations

import copy
import datetime
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlsmith.training.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

pytestmark = pytest.mark.timeout(120)

ROWS = 64
WORLD = 2
STEPS = 3
ATOL = 1e-6

# Single layers: (batch norm class, one row's shape, momentum); LAYER_SHARES: rows per rank.
LAYERS: dict[str, tuple[type[nn.modules.batchnorm._BatchNorm], tuple[int, ...], float | None]] = {
    "1d-NC": (nn.BatchNorm1d, (6,), 0.1),
    "1d-NCL": (nn.BatchNorm1d, (5, 7), None),
    "2d": (nn.BatchNorm2d, (4, 3, 3), 0.1),
    "3d": (nn.BatchNorm3d, (3, 2, 2, 2), None),
}
LAYER_SHARES = {"1d-NC": (32, 32), "1d-NCL": (40, 24), "2d": (40, 24), "3d": (64, 0)}

# Whole networks trained with DDP: (network, rows of rank 0 and rank 1).
TRAININGS = {
    "cnn-32+32": ("cnn", (32, 32)),
    "mlp-32+32": ("mlp", (32, 32)),
    "cnn-40+24": ("cnn", (40, 24)),
    "mlp-40+24": ("mlp", (40, 24)),
    "mlp-0+64": ("mlp", (0, 64)),
}


def _network(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "cnn":
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 5 * 5, 2),
        )
    return nn.Sequential(
        nn.Linear(8, 16),
        # momentum None: the cumulative average of the batches' statistics.
        nn.BatchNorm1d(16, momentum=None),
        nn.ReLU(),
        nn.Linear(16, 2),
    )


def _data(kind: str, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    shape = (ROWS, 3, 5, 5) if kind == "cnn" else (ROWS, 8)
    # Off centre, so that the statistics' precision matters.
    x = torch.randn(shape, generator=generator) * 2 + 3
    return x, torch.randn(ROWS, 2, generator=generator)


def _layer_inputs(name: str, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    _, shape, _ = LAYERS[name]
    generator = torch.Generator().manual_seed(200 + step)
    x = torch.randn(ROWS, *shape, generator=generator) * 3 + 5
    return x, torch.randn(ROWS, *shape, generator=generator)


def _layer(name: str) -> nn.modules.batchnorm._BatchNorm:
    cls, shape, momentum = LAYERS[name]
    layer = cls(shape[0], momentum=momentum)
    generator = torch.Generator().manual_seed(300)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(shape[0], generator=generator) + 0.5)
        layer.bias.copy_(torch.randn(shape[0], generator=generator))
    return layer


def _bounds(shares: tuple[int, int], rank: int) -> slice:
    return slice(sum(shares[:rank]), sum(shares[: rank + 1]))


def _close(
    actual: torch.Tensor, expected: torch.Tensor, what: object, scaled: bool = False
) -> None:
    """``actual`` within ATOL of ``expected``; with ``scaled``, within ATOL times the largest
    magnitude of ``expected`` (when above 1). Sums over the global batch are added in another
    order than one process adds them, so in float32 they differ by a few units in the last
    place of the sum: ~4e-6 for a parameter gradient of ~20 summed over 512 values."""
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    if not actual.numel():
        return
    tolerance = ATOL * max(1.0, expected.abs().max().item()) if scaled else ATOL
    difference = (actual.double() - expected.double()).abs().max().item()
    assert difference <= tolerance, (what, difference, tolerance)


# -- The ranks' side --------------------------------------------------------------------------


def _rank_layers(rank: int) -> dict[str, Any]:
    """Each layer case: the rank's outputs, input gradients, parameter gradients and buffers."""
    results: dict[str, Any] = {}
    for name, shares in LAYER_SHARES.items():
        layer = convert_sync_batchnorm(_layer(name))
        rows = _bounds(shares, rank)
        steps = []
        for step in range(2):  # two updates of the running statistics
            x, grad = _layer_inputs(name, step)
            local = x[rows].clone().requires_grad_(True)
            layer.zero_grad()
            out = layer(local)
            # Summed over the ranks, this is the whole batch's loss (out * grad).sum().
            (out * grad[rows]).sum().backward()
            steps.append(
                {
                    "out": out.detach(),
                    "input_grad": local.grad,
                    "weight_grad": layer.weight.grad.clone(),
                    "bias_grad": layer.bias.grad.clone(),
                }
            )
        results[name] = {"steps": steps, "buffers": copy.deepcopy(dict(layer.named_buffers()))}
    return results


def _rank_trainings(rank: int) -> dict[str, Any]:
    """Each training case: the network's final state, and rank 0's eval outputs."""
    results: dict[str, Any] = {}
    for name, (kind, shares) in TRAININGS.items():
        network = convert_sync_batchnorm(_network(kind))
        replica = nn.parallel.DistributedDataParallel(network)
        optimizer = torch.optim.SGD(replica.parameters(), lr=0.1)
        rows = _bounds(shares, rank)
        for step in range(STEPS):
            x, y = _data(kind, step)
            out = replica(x[rows])
            if shares[0] == shares[1]:
                # DDP averages the ranks' gradients: the mean of equal halves is the batch's.
                loss = F.mse_loss(out, y[rows])
            else:
                # mean * len(local) * world / ROWS, written so that an empty share gives 0.
                loss = F.mse_loss(out, y[rows], reduction="sum") / y.shape[1] * WORLD / ROWS
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        result: dict[str, Any] = {"state": copy.deepcopy(network.state_dict())}
        if rank == 0:
            # Rank 0 alone: eval mode must not wait for the other rank.
            network.eval()
            with torch.no_grad():
                result["eval"] = network(_data(kind, STEPS)[0])
        torch.distributed.barrier()
        results[name] = result
    return results


def _rank(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=WORLD,
        # A rank left waiting in a collective fails the test instead of hanging it.
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        results = {"layers": _rank_layers(rank), "trainings": _rank_trainings(rank)}
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each of two gloo ranks computed, every case in one start of two processes."""
    root = tmp_path_factory.mktemp("sync_batchnorm")
    # Forked rather than spawned: the ranks start with what this process has imported (a
    # spawned rank spends seconds importing it again), so import first torch._dynamo, which
    # torch imports on building the first optimizer. Each rank sets one thread before any
    # work, as DataLoader workers forked the same way do. Python 3.12+ warns about any fork of
    # a process with threads (torch's), which the suite's filterwarnings makes an error.
    import torch._dynamo

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "This process .* use of fork", DeprecationWarning)
        torch.multiprocessing.start_processes(
            _rank, args=(str(root / "store"), str(root)), nprocs=WORLD, start_method="fork"
        )
    return [torch.load(root / f"rank{rank}.pt") for rank in range(WORLD)]


# -- One process ------------------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum0.1", "cumulative"])
@pytest.mark.parametrize(
    ("cls", "shape"),
    [(nn.BatchNorm1d, (16, 6)), (nn.BatchNorm1d, (16, 6, 5)), (nn.BatchNorm2d, (16, 4, 3, 3))],
    ids=["1d-NC", "1d-NCL", "2d"],
)
def test_without_a_process_group_it_is_plain_batch_norm(
    cls: type[nn.modules.batchnorm._BatchNorm], shape: tuple[int, ...], momentum: float | None
) -> None:
    """Outputs, gradients (input and parameters) and running statistics, train then eval."""
    assert not torch.distributed.is_initialized()
    expected = cls(shape[1], momentum=momentum)
    with torch.no_grad():
        expected.weight.uniform_(0.5, 1.5)
        expected.bias.normal_()
    actual = convert_sync_batchnorm(copy.deepcopy(expected))
    assert isinstance(actual, SyncBatchNorm)
    generator = torch.Generator().manual_seed(0)
    for step, training in enumerate([True, True, True, False]):
        expected.train(training)
        actual.train(training)
        x = torch.randn(shape, generator=generator) * 3 + 5
        grad = torch.randn(shape, generator=generator)
        outputs = []
        for layer in (expected, actual):
            layer.zero_grad()
            leaf = x.clone().requires_grad_(True)
            out = layer(leaf)
            (out * grad).sum().backward()
            outputs.append((out, leaf.grad, layer.weight.grad, layer.bias.grad))
        names = ["out", "input grad", "weight grad", "bias grad"]
        for what, e, a in zip(names, *outputs, strict=True):
            _close(a, e, (step, what))
        for (key, a), (_, e) in zip(actual.named_buffers(), expected.named_buffers(), strict=True):
            _close(a, e, (step, key))


def test_convert_takes_over_parameters_buffers_and_flags() -> None:
    """Nested layers are replaced, keeping their tensors (dtype, requires_grad included), their
    hyperparameters and training flag; other layers and converted ones are left alone."""
    inner = nn.BatchNorm2d(3, eps=1e-3, momentum=None, dtype=torch.float64)
    inner.weight.requires_grad_(False)
    untracked = nn.BatchNorm1d(5, affine=False, track_running_stats=False).eval()
    already = SyncBatchNorm(4)
    network = nn.Sequential(
        nn.Conv2d(1, 3, 1), nn.Sequential(inner, nn.ReLU()), nn.ModuleList([untracked, already])
    )
    weight, running_mean = inner.weight, inner.running_mean

    converted = convert_sync_batchnorm(network)

    assert converted is network
    modules = dict(converted.named_modules())
    layer = modules["1.0"]
    assert type(layer) is SyncBatchNorm
    assert layer.weight is weight and layer.running_mean is running_mean
    assert layer.weight.dtype == torch.float64 and not layer.weight.requires_grad
    assert (layer.eps, layer.momentum, layer.affine, layer.track_running_stats) == (
        1e-3,
        None,
        True,
        True,
    )
    other = modules["2.0"]
    assert type(other) is SyncBatchNorm and not other.training
    assert other.weight is None and other.running_mean is None and not other.track_running_stats
    assert modules["2.1"] is already
    assert isinstance(modules["0"], nn.Conv2d) and isinstance(modules["1.1"], nn.ReLU)
    # A batch norm layer itself comes back replaced.
    assert type(convert_sync_batchnorm(nn.BatchNorm1d(2))) is SyncBatchNorm


def test_float64_inputs_keep_their_dtype() -> None:
    layer = convert_sync_batchnorm(nn.BatchNorm1d(3, dtype=torch.float64))
    x = torch.randn(8, 3, dtype=torch.float64)
    assert layer(x).dtype == torch.float64


# -- Two processes ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LAYER_SHARES))
def test_two_ranks_normalise_with_the_global_batch(ranks: list[dict[str, Any]], name: str) -> None:
    """Each rank's outputs and input gradients are its rows of one process's on the whole
    batch (gradients flow through the global statistics to both ranks); the parameter
    gradients add up to one process's, and both ranks keep its running statistics."""
    shares = LAYER_SHARES[name]
    expected = _layer(name)
    for step in range(2):
        x, grad = _layer_inputs(name, step)
        x.requires_grad_(True)
        expected.zero_grad()
        out = expected(x)
        (out * grad).sum().backward()
        assert x.grad is not None
        for rank in range(WORLD):
            actual = ranks[rank]["layers"][name]["steps"][step]
            rows = _bounds(shares, rank)
            _close(actual["out"], out.detach()[rows], (rank, step, "out"), scaled=True)
            _close(actual["input_grad"], x.grad[rows], (rank, step, "input grad"), scaled=True)
        for key in ("weight", "bias"):
            total = sum(
                ranks[rank]["layers"][name]["steps"][step][f"{key}_grad"] for rank in (0, 1)
            )
            _close(total, getattr(expected, key).grad, (step, key), scaled=True)
    for rank in range(WORLD):
        buffers = ranks[rank]["layers"][name]["buffers"]
        for key, value in expected.named_buffers():
            _close(buffers[key], value, (rank, key), scaled=True)


@pytest.mark.parametrize("name", list(TRAININGS))
def test_two_ranks_train_the_network_of_one_process_with_the_global_batch(
    ranks: list[dict[str, Any]], name: str
) -> None:
    """DDP with 2 ranks sharing 64 rows (equally or not) ends with one process's weights and
    running statistics after 3 SGD steps on all 64 rows with plain batch norm."""
    kind, _ = TRAININGS[name]
    network = _network(kind)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    for step in range(STEPS):
        x, y = _data(kind, step)
        loss = F.mse_loss(network(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    expected = network.state_dict()
    for rank in range(WORLD):
        state = ranks[rank]["trainings"][name]["state"]
        assert state.keys() == expected.keys()
        for key, value in expected.items():
            _close(state[key], value, (rank, key))
    network.eval()
    with torch.no_grad():
        out = network(_data(kind, STEPS)[0])
    _close(ranks[0]["trainings"][name]["eval"], out, "eval", scaled=True)
