"""``model.type: custom``: your own ``torch.nn.Module``, as a family like the built-in ones.

The class ``model.module`` names (:mod:`mlsmith.user_code`) is built as
``Class(n_outputs=..., inputs=..., **model.params)`` and trained by the same Trainer, with the
same checks, checkpoints, resume, tracking, tuning, package (ONNX with its parity check) and
serving as every torch family: the network receives the data kind's named tensors, so nothing
downstream can tell it from a built-in one. Checkpoints hold its weights only; loading a run
builds the class again from the config, so no object is ever unpickled.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from mlsmith.config import CustomConfig
from mlsmith.errors import ConfigError
from mlsmith.models.neural import NeuralModel
from mlsmith.models.text import TextModel
from mlsmith.user_code import load_class


class CustomModel(TextModel):
    """Your network on tables, images or text (see the module)."""

    family = "custom"

    def build_network(self) -> nn.Module:
        cfg = self.config.model
        if not isinstance(cfg, CustomConfig):  # mlsmith.families routes by model.type
            raise TypeError(f"CustomModel got a model section of type '{cfg.type}'")
        network_class = load_class(cfg.module, "model.module", nn.Module, "a torch.nn.Module")
        try:
            network = network_class(
                n_outputs=self.task.n_outputs, inputs=self.inputs(), **cfg.params
            )
        except TypeError as exc:
            raise ConfigError(
                f"model.module: {cfg.module} cannot be built as "
                f"{network_class.__name__}(*, n_outputs, inputs, **model.params) with params "
                f"{sorted(cfg.params)}: {exc}"
            ) from None
        if not any(True for _ in network.parameters()):
            raise ConfigError(f"model.module: {cfg.module} has no parameters to train")
        return network

    def inputs(self) -> dict[str, Any]:
        """What the data kind feeds the network, as the constructor's ``inputs`` describes it."""
        spec = self.preprocessor.model_inputs()
        kind = self.preprocessor.kind
        if kind == "tabular":
            return {"numeric": spec["n_numeric"], "categorical": list(spec["cardinalities"])}
        if kind == "text":
            return {
                "vocab_size": spec["vocab_size"],
                "max_length": spec["max_length"],
                "padding_id": int(getattr(self.preprocessor, "pad_id", 0)),
            }
        return dict(spec)  # images: channels, height, width

    def predict_raw(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if "lengths" in inputs:  # text: in length order, as the text families predict
            return super().predict_raw(inputs)
        return NeuralModel.predict_raw(self, inputs)
