"""Tests for mlsmith.models.transformer: shapes, the padding mask, mean and CLS pooling."""

from __future__ import annotations

import pytest
import torch

from mlsmith.config import TransformerConfig
from mlsmith.models.transformer import TextTransformer

VOCAB, MAX_LENGTH = 40, 16


def _batch(lengths: list[int], width: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    width = width or max(max(lengths), 1)
    ids = torch.randint(2, VOCAB, (len(lengths), width), generator=generator)
    mask = torch.arange(width) < torch.tensor(lengths)[:, None]
    return {"input_ids": ids.masked_fill(~mask, 0), "attention_mask": mask}


def _network(pooling: str = "mean", seed: int = 0, **options: object) -> TextTransformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(dim=16, depth=2, heads=2, pooling=pooling, **options)  # type: ignore[arg-type]
    network = TextTransformer(VOCAB, MAX_LENGTH, 3, cfg)
    torch.nn.init.normal_(network.head.weight)  # near zero at first; make differences visible
    return network


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_output_shape_and_parameters(pooling: str) -> None:
    network = _network(pooling).eval()
    assert network(**_batch([5, 1, 16])).shape == (3, 3)
    positions = MAX_LENGTH + (pooling == "cls")
    assert network.positions.shape == (positions, 16)
    assert (network.cls is not None) == (pooling == "cls")


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("grad", [False, True])
def test_appending_padding_does_not_change_outputs(pooling: str, grad: bool) -> None:
    """With and without autograd: eval under no_grad may take torch's fused fast path."""
    network = _network(pooling).eval()
    batch = _batch([6, 2, 4, 0])
    extra = 7
    padded = {
        "input_ids": torch.cat([batch["input_ids"], torch.full((4, extra), 5)], dim=1),
        "attention_mask": torch.cat(
            [batch["attention_mask"], torch.zeros(4, extra, dtype=bool)], 1
        ),
    }
    with torch.set_grad_enabled(grad):
        expected = network(**batch)
        torch.testing.assert_close(network(**padded), expected, rtol=1e-5, atol=1e-5)
        # A text alone (no padding at all) gives what it gives in a padded batch.
        alone = network(**{k: v[1:2, :2] for k, v in batch.items()})
        torch.testing.assert_close(alone, expected[1:2], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(expected).all()  # the empty text too


def test_padding_content_is_ignored_when_training() -> None:
    network = _network().train()
    batch = _batch([6, 3])
    noisy = dict(batch, input_ids=batch["input_ids"].masked_fill(~batch["attention_mask"], 9))
    torch.manual_seed(1)
    first = network(**batch)
    torch.manual_seed(1)
    torch.testing.assert_close(network(**noisy), first)
    first.sum().backward()
    assert all(p.grad is not None for p in network.parameters() if p.requires_grad)


def test_mean_and_cls_pooling_differ() -> None:
    batch = _batch([6, 3, 5])
    mean, cls = _network("mean").eval(), _network("cls").eval()
    assert not torch.allclose(mean(**batch), cls(**batch))
    # CLS reads one learned vector: zeroing it changes the output; mean pooling has none.
    before = cls(**batch)
    with torch.no_grad():
        assert cls.cls is not None
        cls.cls.zero_()
    assert not torch.allclose(cls(**batch), before)


def test_positions_make_order_matter() -> None:
    network = _network().eval()
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    assert not torch.allclose(network(ids, mask), network(ids.flip(1), mask))


def test_bf16_autocast_forward_and_backward() -> None:
    network = _network().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = network(**_batch([5, 2]))
    out.float().sum().backward()
    assert torch.isfinite(out.float()).all()
    assert network.tokens.weight.grad is not None
