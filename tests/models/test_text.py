"""Tests for mlsmith.models.text: length-sorted prediction keeps the input order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.conftest import config_dict
from tests.text_data import make_texts

from mlsmith.config import load_config
from mlsmith.data.text import prepare
from mlsmith.models.bag import BagModel
from mlsmith.models.neural import NeuralModel
from mlsmith.models.transformer import TransformerModel


@pytest.mark.parametrize(
    ("family", "model"),
    [
        (BagModel, {"type": "bag", "dim": 8, "buckets": 256}),
        (TransformerModel, {"type": "transformer", "dim": 16, "depth": 1, "heads": 2}),
    ],
)
def test_predictions_come_back_in_input_order(
    family: type[NeuralModel], model: dict[str, object], tmp_path: Path
) -> None:
    path = tmp_path / "texts.csv"
    make_texts(rows=150).to_csv(path, index=False)
    raw = config_dict(path, tmp_path / "runs", train={"eval_batch_size": 16})
    raw["data"] = {"type": "text", "path": str(path), "target": "label"}
    raw["model"] = model
    config = load_config(raw)
    data = prepare(config)
    network = family(config, data.preprocessor)
    inputs = data.train.inputs
    assert not (np.diff(inputs["lengths"]) >= 0).all()  # not already in length order

    sorted_raw = network.predict_raw(inputs)
    table_order = NeuralModel.predict_raw(network, inputs)
    np.testing.assert_allclose(sorted_raw, table_order, rtol=1e-5, atol=1e-6)
    assert network.predict_raw({k: v[:0] for k, v in inputs.items()}).shape[0] == 0
