"""What the text families share: prediction in length order, so batches carry little padding."""

from __future__ import annotations

import numpy as np

from mlsmith.models.neural import NeuralModel


class TextModel(NeuralModel):
    """A network over token ids (``input_ids`` + ``lengths`` from :mod:`mlsmith.data.text`)."""

    def predict_raw(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Predict texts sorted by length and put the outputs back in the input order.

        Each batch is trimmed to its longest text, so sorted batches hold almost no padding;
        in table order a 1,024-text batch pads every text to the longest of them.
        """
        order = np.argsort(inputs["lengths"], kind="stable")
        raw = super().predict_raw({name: array[order] for name, array in inputs.items()})
        out = np.empty_like(raw)
        out[order] = raw
        return out
