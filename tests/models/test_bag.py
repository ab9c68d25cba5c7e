"""Tests for mlsmith.models.bag: shapes, hashed n-grams, and padding invariance."""

from __future__ import annotations

import pytest
import torch

from mlsmith.config import BagConfig
from mlsmith.models.bag import BagOfNgrams

VOCAB = 50


def _batch(lengths: list[int], width: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    width = width or max(max(lengths), 1)
    ids = torch.randint(2, VOCAB, (len(lengths), width), generator=generator)
    mask = torch.arange(width) < torch.tensor(lengths)[:, None]
    return {"input_ids": ids.masked_fill(~mask, 0), "attention_mask": mask}


def _network(seed: int = 0, **options: object) -> BagOfNgrams:
    torch.manual_seed(seed)
    network = BagOfNgrams(VOCAB, 3, BagConfig(dim=8, buckets=64, **options))  # type: ignore[arg-type]
    # The head starts at zero (every class equally likely); give it weights to see differences.
    torch.nn.init.normal_(network.head.weight)
    return network.eval()


def test_output_shape_and_zero_initial_head() -> None:
    torch.manual_seed(0)
    network = BagOfNgrams(VOCAB, 3, BagConfig(dim=8, buckets=64))
    batch = _batch([5, 1, 3])
    assert network(**batch).shape == (3, 3)
    assert torch.equal(network(**batch), torch.zeros(3, 3))  # first loss is ln(C)
    assert network.embedding.weight.shape == (VOCAB + 64 + 1, 8)


def test_ngram_ids_hash_into_the_buckets_and_pad_the_rest() -> None:
    network = _network(ngrams=3)
    batch = _batch([5, 2, 0], width=6)
    ids = network.ngram_ids(**batch)
    assert ids.shape == (3, 6 + 5 + 4)  # tokens, bigrams, trigrams
    pad = network.pad_index
    tokens, bigrams, trigrams = ids[:, :6], ids[:, 6:11], ids[:, 11:]
    assert torch.equal(tokens[0, :5], batch["input_ids"][0, :5]) and tokens[0, 5] == pad
    assert ((bigrams[0, :4] >= VOCAB) & (bigrams[0, :4] < VOCAB + 64)).all()
    assert (bigrams[0, 4:] == pad).all() and (trigrams[0, 3:] == pad).all()
    assert bigrams[1, 0] != pad and (bigrams[1, 1:] == pad).all() and (trigrams[1] == pad).all()
    assert (ids[2] == pad).all()  # the empty text


def test_the_same_ngram_gets_the_same_bucket_wherever_it_is() -> None:
    network = _network()
    ids = torch.tensor([[7, 9, 4, 7, 9]])
    grams = network.ngram_ids(ids, torch.ones_like(ids, dtype=torch.bool))[0, 5:]
    assert grams[0] == grams[3]  # (7, 9) twice
    assert len({int(g) for g in grams}) == 3  # (7,9), (9,4), (4,7) differ here


def test_unigrams_only_has_no_buckets() -> None:
    network = _network(ngrams=1)
    assert network.embedding.weight.shape == (VOCAB + 1, 8)
    batch = _batch([4, 2])
    assert network.ngram_ids(**batch).shape == (2, 4)


@pytest.mark.parametrize("ngrams", [1, 2, 3])
def test_appending_padding_does_not_change_outputs(ngrams: int) -> None:
    network = _network(ngrams=ngrams)
    batch = _batch([6, 1, 3, 0])
    padded = {
        "input_ids": torch.cat([batch["input_ids"], torch.zeros(4, 9, dtype=torch.int64)], 1),
        "attention_mask": torch.cat([batch["attention_mask"], torch.zeros(4, 9, dtype=bool)], 1),
    }
    # Whatever sits in padded cells is ignored.
    noisy = dict(padded, input_ids=padded["input_ids"].masked_fill(~padded["attention_mask"], 33))
    expected = network(**batch)
    torch.testing.assert_close(network(**padded), expected)
    torch.testing.assert_close(network(**noisy), expected)
    # A text alone gives what it gives in a batch.
    torch.testing.assert_close(network(**{k: v[:1, :6] for k, v in batch.items()}), expected[:1])
    # The empty text is the zero vector: only the bias remains.
    torch.testing.assert_close(expected[3], network.head.bias)


def test_word_order_matters_only_through_ngrams() -> None:
    forward = torch.tensor([[3, 4, 5, 6]])
    backward = forward.flip(1)
    mask = torch.ones_like(forward, dtype=torch.bool)
    unigrams, bigrams = _network(ngrams=1), _network(ngrams=2)
    torch.testing.assert_close(unigrams(forward, mask), unigrams(backward, mask))
    assert not torch.allclose(bigrams(forward, mask), bigrams(backward, mask))


def test_gradients_reach_embeddings_and_head() -> None:
    network = _network(dropout=0.5).train()
    batch = _batch([5, 3, 4])
    network(**batch).sum().backward()
    assert network.embedding.weight.grad is not None and network.head.weight.grad is not None
    assert network.embedding.weight.grad.abs().sum() > 0
    assert network.embedding.weight.grad[network.pad_index].abs().sum() == 0
