"""A multilayer perceptron for tables: standardized numerics + one embedding per categorical."""

from __future__ import annotations

import math

import torch
from torch import nn

from mlsmith.config import EmbeddingConfig, MLPConfig
from mlsmith.models.neural import NeuralModel

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}


def embedding_dim(cardinality: int, cfg: EmbeddingConfig) -> int:
    """Width of a categorical's embedding from its number of values."""
    if cfg.rule == "fixed":
        size = cfg.dim
    elif cfg.rule == "sqrt":
        size = math.ceil(math.sqrt(cardinality))
    else:  # fastai's empirical rule, from its tabular models
        size = round(1.6 * cardinality**0.56)
    return max(1, min(cfg.max_dim, size))


class TabularMLP(nn.Module):
    def __init__(
        self, n_numeric: int, cardinalities: list[int], n_outputs: int, cfg: MLPConfig
    ) -> None:
        super().__init__()
        dims = [embedding_dim(c, cfg.embedding) for c in cardinalities]
        self.embeddings = nn.ModuleList(
            nn.Embedding(c, d) for c, d in zip(cardinalities, dims, strict=True)
        )
        layers: list[nn.Module] = []
        width = n_numeric + sum(dims)
        for hidden in cfg.hidden:
            layers.append(nn.Linear(width, hidden))
            if cfg.norm == "batch":
                layers.append(nn.BatchNorm1d(hidden))
            elif cfg.norm == "layer":
                layers.append(nn.LayerNorm(hidden))
            layers.append(ACTIVATIONS[cfg.activation]())
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_outputs)
        self._init(cfg.activation)

    def _init(self, activation: str) -> None:
        for module in self.body:
            if isinstance(module, nn.Linear):
                if activation == "tanh":
                    nn.init.xavier_uniform_(module.weight, gain=nn.init.calculate_gain("tanh"))
                else:  # He init keeps activations' scale through ReLU-like layers
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        for embedding in self.embeddings:
            assert isinstance(embedding, nn.Embedding)
            nn.init.normal_(embedding.weight, std=0.1)
        # A near-zero head starts every class at the same logit, so the first loss is ln(C)
        # (or the target variance for regression), not a confident wrong guess.
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        # numeric: (B, n_numeric) float; categorical: (B, n_categorical) int64
        parts = [numeric] + [emb(categorical[:, j]) for j, emb in enumerate(self.embeddings)]
        x = torch.cat(parts, dim=1)  # (B, n_numeric + sum(embedding dims))
        return self.head(self.body(x))  # (B, n_outputs)


class MLPModel(NeuralModel):
    family = "mlp"

    def build_network(self) -> nn.Module:
        spec = self.preprocessor.model_inputs()
        cfg = self.config.model
        if not isinstance(cfg, MLPConfig):  # mlsmith.families routes by model.type
            raise TypeError(f"MLPModel got a model section of type '{cfg.type}'")
        return TabularMLP(spec["n_numeric"], spec["cardinalities"], self.task.n_outputs, cfg)
