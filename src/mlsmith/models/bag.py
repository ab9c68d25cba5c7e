"""fastText-style text classifier: the mean of token and hashed n-gram embeddings, then linear.

Joulin et al., "Bag of Tricks for Efficient Text Classification" (2016): averaging word and
bigram embeddings and a linear classifier on top matches far deeper models on sentiment and
topic tasks at a fraction of the cost. N-grams of token ids are hashed into ``buckets`` shared
rows, so the table's size does not grow with the corpus.
"""

from __future__ import annotations

import torch
from torch import nn

from mlsmith.config import BagConfig
from mlsmith.models.text import TextModel

# Multiplier of the rolling n-gram hash (a prime, so consecutive ids spread over the buckets).
HASH_PRIME = 1_000_003


class BagOfNgrams(nn.Module):
    """Embedding rows: ``vocab_size`` tokens, then ``buckets`` n-gram hashes, then one padding."""

    def __init__(self, vocab_size: int, n_outputs: int, cfg: BagConfig) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.ngrams = cfg.ngrams
        self.buckets = cfg.buckets if cfg.ngrams > 1 else 0
        self.pad_index = vocab_size + self.buckets
        # mode="mean" with padding_idx: padding rows are left out of each text's mean (an empty
        # text gives the zero vector), so extra padding never changes a text's representation.
        self.embedding = nn.EmbeddingBag(
            self.pad_index + 1, cfg.dim, mode="mean", padding_idx=self.pad_index
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.dim, n_outputs)
        # fastText's initialisation: small uniform inputs, a zero classifier (so the first loss
        # is ln(C): every class equally likely).
        with torch.no_grad():
            nn.init.uniform_(self.embedding.weight, -1.0 / cfg.dim, 1.0 / cfg.dim)
            self.embedding.weight[self.pad_index].zero_()
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def ngram_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids followed by the hashed ids of every 2..n-gram; padding -> ``pad_index``."""
        # input_ids, attention_mask: (B, T); the mask is a prefix of True per row.
        parts = [input_ids.masked_fill(~attention_mask, self.pad_index)]  # (B, T)
        rolling = input_ids
        for n in range(2, self.ngrams + 1):
            if input_ids.shape[1] < n:
                break
            # The n-gram starting at t: hash(tokens t..t+n-2) combined with token t+n-1.
            rolling = (rolling[:, :-1] * HASH_PRIME + input_ids[:, n - 1 :]) % self.buckets
            valid = attention_mask[:, n - 1 :]  # the n-gram's last token is real: (B, T-n+1)
            parts.append((rolling + self.vocab_size).masked_fill(~valid, self.pad_index))
        return torch.cat(parts, dim=1)  # (B, T + (T-1) + ... + (T-n+1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # input_ids: (B, T) int64; attention_mask: (B, T) bool, True for real tokens
        ids = self.ngram_ids(input_ids, attention_mask)  # (B, L)
        pooled = self.embedding(ids)  # (B, dim): mean over each row's non-padding ids
        return self.head(self.dropout(pooled))  # (B, n_outputs)


class BagModel(TextModel):
    family = "bag"

    def build_network(self) -> nn.Module:
        spec = self.preprocessor.model_inputs()
        cfg = self.config.model
        if not isinstance(cfg, BagConfig):  # mlsmith.families routes by model.type
            raise TypeError(f"BagModel got a model section of type '{cfg.type}'")
        return BagOfNgrams(spec["vocab_size"], self.task.n_outputs, cfg)
