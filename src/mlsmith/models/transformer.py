"""A Transformer encoder for text classification, trained from scratch.

Token embeddings plus learned positions, ``depth`` pre-norm encoder layers (pre-norm trains
stably without a long warmup), then mean pooling over the real tokens or a learned CLS vector,
and a linear head. Padding is masked out of attention and pooling, so a text's output does not
depend on how much padding its batch needed.
"""

from __future__ import annotations

import torch
from torch import nn

from mlsmith.config import TransformerConfig
from mlsmith.models.checkpointing import checkpointed
from mlsmith.models.text import TextModel


class TextTransformer(nn.Module):
    """Token ids and their attention mask in, one row of raw outputs per text out."""

    def __init__(
        self,
        vocab_size: int,
        max_length: int,
        n_outputs: int,
        cfg: TransformerConfig,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = gradient_checkpointing
        self.tokens = nn.Embedding(vocab_size, cfg.dim)
        # One more position for the CLS vector, which goes first.
        self.positions = nn.Parameter(torch.zeros(max_length + (cfg.pooling == "cls"), cfg.dim))
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.pooling == "cls" else None
        layer = nn.TransformerEncoderLayer(
            cfg.dim,
            cfg.heads,
            dim_feedforward=cfg.dim * cfg.ff_mult,
            dropout=cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # Nested tensors do not apply to pre-norm layers (torch warns if asked).
        self.encoder = nn.TransformerEncoder(
            layer, cfg.depth, norm=nn.LayerNorm(cfg.dim), enable_nested_tensor=False
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.dim, n_outputs)
        # BERT-style small normal embeddings; a near-zero head so the first loss is about ln(C).
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions, std=0.02)
        if self.cls is not None:
            nn.init.normal_(self.cls, std=0.02)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # input_ids: (B, T) int64; attention_mask: (B, T) bool, True for real tokens
        x = self.tokens(input_ids)  # (B, T, D)
        mask = attention_mask
        if self.cls is not None:
            x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1)  # (B, S=T+1, D)
            mask = torch.cat([mask.new_ones(len(mask), 1), mask], dim=1)  # (B, S)
        x = self.dropout(x + self.positions[: x.shape[1]])  # (B, S, D); BERT-style input dropout
        # An empty text would leave a row with no key to attend to (softmax over nothing is
        # NaN): let it attend to its first (padding) position; pooling still ignores it.
        padding = ~mask  # (B, S) True = ignore
        padding[:, 0] &= mask.any(dim=1)
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # The encoder's loop, each layer's activations recomputed in the backward pass.
            for layer in self.encoder.layers:
                x = checkpointed(layer, x, src_key_padding_mask=padding)  # (B, S, D)
            if self.encoder.norm is not None:
                x = self.encoder.norm(x)  # (B, S, D)
        else:
            x = self.encoder(x, src_key_padding_mask=padding)  # (B, S, D)
        if self.cls is not None:
            pooled = x[:, 0]  # (B, D)
        else:
            summed = x.masked_fill(~mask[..., None], 0.0).sum(dim=1)  # (B, D)
            pooled = summed / mask.sum(dim=1, keepdim=True).clamp(min=1)  # (B, D)
        return self.head(self.dropout(pooled))  # (B, n_outputs)


class TransformerModel(TextModel):
    family = "transformer"

    def build_network(self) -> nn.Module:
        spec = self.preprocessor.model_inputs()
        cfg = self.config.model
        if not isinstance(cfg, TransformerConfig):  # mlsmith.families routes by model.type
            raise TypeError(f"TransformerModel got a model section of type '{cfg.type}'")
        return TextTransformer(
            spec["vocab_size"],
            spec["max_length"],
            self.task.n_outputs,
            cfg,
            self.config.train.gradient_checkpointing,
        )
