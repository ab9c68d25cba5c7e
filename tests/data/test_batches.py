"""Tests for mlsmith.data.batches: whole-tensor batching, seeded shuffles, accumulation steps."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from mlsmith.data.base import Split
from mlsmith.data.batches import BatchOptions, TensorBatches


def _batches(n: int = 10, batch_size: int = 3, **options: Any) -> TensorBatches:
    """Row i holds i everywhere, so every tensor of a batch tells which rows it carries."""
    ids = np.arange(n)
    inputs = {
        "numeric": np.stack([ids, ids * 10], axis=1).astype(np.float32),
        "categorical": ids[:, None].astype(np.int64),
    }
    return TensorBatches(inputs, ids.astype(np.float32), BatchOptions(batch_size, **options))


def _epoch(batches: TensorBatches, accumulate: int = 1) -> list[list[list[int]]]:
    """One epoch as steps of micro-batches of row ids, checking rows stay aligned."""
    out = []
    for step in batches.steps(accumulate):
        micro = []
        for inputs, target in step:
            ids = target.long()
            assert torch.equal(inputs["numeric"][:, 0].long(), ids)
            assert torch.equal(inputs["numeric"][:, 1].long(), ids * 10)
            assert torch.equal(inputs["categorical"][:, 0], ids)
            micro.append(ids.tolist())
        out.append(micro)
    return out


def _flat(epoch: list[list[list[int]]]) -> list[int]:
    return [i for step in epoch for micro in step for i in micro]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(
    ("n", "batch_size", "accumulate"), [(10, 3, 1), (10, 3, 2), (7, 7, 1), (5, 8, 3), (64, 8, 4)]
)
def test_every_row_exactly_once_per_epoch(
    shuffle: bool, n: int, batch_size: int, accumulate: int
) -> None:
    batches = _batches(n, batch_size, shuffle=shuffle, seed=1)
    for _ in range(3):
        order = _flat(_epoch(batches, accumulate))
        assert sorted(order) == list(range(n))
    assert len(batches) == n


def test_unshuffled_order_is_the_table_order() -> None:
    batches = _batches(10, 4)
    assert _epoch(batches) == [[[0, 1, 2, 3]], [[4, 5, 6, 7]], [[8, 9]]]
    assert _epoch(batches) == _epoch(batches)


def test_shuffle_differs_between_epochs_and_is_reproducible() -> None:
    first = _batches(50, 8, shuffle=True, seed=7)
    twin = _batches(50, 8, shuffle=True, seed=7)
    other = _batches(50, 8, shuffle=True, seed=8)

    epochs = [_flat(_epoch(first)) for _ in range(3)]
    assert epochs[0] != list(range(50))
    assert epochs[0] != epochs[1] != epochs[2]
    assert [_flat(_epoch(twin)) for _ in range(3)] == epochs
    assert _flat(_epoch(other)) != epochs[0]


def test_generator_state_replays_an_epoch() -> None:
    """A resumed run restores the generator state and sees the same batches."""
    batches = _batches(30, 4, shuffle=True, seed=0)
    _epoch(batches)
    state = batches.generator.get_state()
    expected = _epoch(batches)

    batches.generator.set_state(state)
    assert _epoch(batches) == expected


@pytest.mark.parametrize("shuffle", [False, True])
def test_drop_last_drops_only_the_partial_batch(shuffle: bool) -> None:
    batches = _batches(10, 3, shuffle=shuffle, drop_last=True, seed=2)
    epoch = _epoch(batches)

    assert [len(m) for step in epoch for m in step] == [3, 3, 3]
    rows = _flat(epoch)
    assert len(set(rows)) == 9
    assert batches.n_steps() == 3
    if not shuffle:
        assert rows == list(range(9))


def test_drop_last_with_an_exact_fit_keeps_everything() -> None:
    assert _flat(_epoch(_batches(9, 3, drop_last=True))) == list(range(9))


@pytest.mark.parametrize(
    ("n", "batch_size", "accumulate", "drop_last", "shape"),
    [
        (10, 3, 2, False, [[3, 3], [3, 1]]),
        (10, 3, 4, False, [[3, 3, 3, 1]]),
        (12, 3, 2, False, [[3, 3], [3, 3]]),
        (14, 3, 2, False, [[3, 3], [3, 3], [2]]),
        (10, 3, 2, True, [[3, 3]]),
        (14, 2, 3, True, [[2, 2, 2], [2, 2, 2]]),
        (5, 3, 2, True, []),
    ],
)
def test_steps_group_micro_batches(
    n: int, batch_size: int, accumulate: int, drop_last: bool, shape: list[list[int]]
) -> None:
    batches = _batches(n, batch_size, drop_last=drop_last)
    epoch = _epoch(batches, accumulate)

    assert [[len(m) for m in step] for step in epoch] == shape
    assert batches.n_steps(accumulate) == len(shape)
    # Step k covers rows [k*B*A, (k+1)*B*A) of the epoch's order.
    per_step = batch_size * accumulate
    for k, step in enumerate(epoch):
        assert [i for m in step for i in m] == list(range(k * per_step, min((k + 1) * per_step, n)))


@pytest.mark.parametrize("drop_last", [False, True])
def test_accumulated_steps_see_what_one_big_batch_would(drop_last: bool) -> None:
    small = _batches(50, 4, shuffle=True, seed=3, drop_last=drop_last)
    big = _batches(50, 12, shuffle=True, seed=3, drop_last=drop_last)
    for _ in range(2):
        accumulated = [sorted(i for m in step for i in m) for step in _epoch(small, 3)]
        single = [sorted(step[0]) for step in _epoch(big, 1)]
        assert accumulated == single


def test_iter_yields_every_micro_batch_in_order() -> None:
    batches = _batches(10, 4)
    targets = [t.tolist() for _, t in batches]
    assert targets == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_unshuffled_batches_are_views_of_the_whole_tensors() -> None:
    """No per-sample indexing: a batch is a slice of the tensor built once from the array."""
    batches = _batches(10, 3)
    for start, (inputs, target) in zip(range(0, 10, 3), batches, strict=True):
        for name, tensor in inputs.items():
            whole = batches.inputs[name]
            assert tensor.untyped_storage().data_ptr() == whole.untyped_storage().data_ptr()
            assert tensor.storage_offset() == start * whole.shape[1]
            assert tensor.is_contiguous()
        assert target.untyped_storage().data_ptr() == batches.target.untyped_storage().data_ptr()


def test_shuffled_epoch_is_one_gather_then_slices() -> None:
    batches = _batches(20, 3, shuffle=True, seed=0)
    for _ in range(2):
        storages: dict[str, set[int]] = {"numeric": set(), "categorical": set(), "target": set()}
        offsets = []
        for inputs, target in batches:
            for name, tensor in inputs.items():
                storages[name].add(tensor.untyped_storage().data_ptr())
                assert tensor.is_contiguous()
            storages["target"].add(target.untyped_storage().data_ptr())
            offsets.append(target.storage_offset())
        # Each tensor was permuted once for the epoch; every batch is a slice of that copy.
        assert all(len(ptrs) == 1 for ptrs in storages.values())
        assert storages["numeric"] != {batches.inputs["numeric"].untyped_storage().data_ptr()}
        assert offsets == list(range(0, 20, 3))


def test_arrays_are_wrapped_without_copying_when_possible() -> None:
    numeric = np.arange(12, dtype=np.float32).reshape(6, 2)
    batches = TensorBatches({"numeric": numeric}, np.zeros(6, dtype=np.float32), BatchOptions(2))
    assert batches.inputs["numeric"].data_ptr() == numeric.ctypes.data


def test_non_contiguous_arrays_are_accepted() -> None:
    wide = np.arange(40, dtype=np.float32).reshape(10, 4)
    batches = TensorBatches(
        {"numeric": wide[::2, 1:3]}, np.arange(5, dtype=np.int64), BatchOptions(2)
    )
    first_inputs, first_target = next(iter(batches))
    assert first_inputs["numeric"].tolist() == [[1.0, 2.0], [9.0, 10.0]]
    assert first_target.dtype == torch.int64


def test_without_target_batches_carry_a_placeholder() -> None:
    batches = TensorBatches({"numeric": np.ones((5, 2), dtype=np.float32)}, None, BatchOptions(2))
    targets = [t for _, t in batches]
    assert [len(t) for t in targets] == [2, 2, 1]
    assert all(t.dtype == torch.float32 and not t.any() for t in targets)


def test_from_split_and_to_device() -> None:
    split = Split(
        {"numeric": np.ones((4, 1), dtype=np.float32), "categorical": np.zeros((4, 0), np.int64)},
        np.array([0, 1, 2, 3], dtype=np.int64),
    )
    batches = TensorBatches.from_split(split, BatchOptions(3, shuffle=True, seed=0))
    batches = batches.to(torch.device("cpu"))
    assert len(batches) == 4
    assert batches.n_steps() == 2
    assert sorted(_flat([[t.tolist()] for _, t in batches])) == [0, 1, 2, 3]
    assert next(iter(batches))[0]["categorical"].shape == (3, 0)
