"""Per-layer gradient norms, sampled every ``train.layer_grad_norm_every`` steps: in steps.csv,
the checkpoint (an exact resume), the tracker, the report, and the vanishing/exploding
observation they feed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import config_dict, make_table
from tests.training.test_trainer import batches, fit, make_net, regression_data, train_config

import mlsmith
from mlsmith.training.checkpoint import LAST
from mlsmith.training.diagnostics import gradient_flow, layer_of
from mlsmith.training.history import HistoryWriter


def test_layers_are_sampled_every_n_steps_and_add_up_to_the_total(tmp_path: Path) -> None:
    x, y = regression_data(320)
    config = train_config(epochs=2, layer_grad_norm_every=4)
    writer = HistoryWriter(tmp_path)
    trainer, _ = fit(
        tmp_path, make_net(), config, batches(x, y, 32), batches(x, y, 32), callbacks=[writer]
    )
    assert trainer.layer_names == ["body.0", "body.3"]
    samples = trainer.layer_rows
    assert [int(s[0]) for s in samples] == [1, 4, 8, 12, 16, 20]
    totals = {int(r[0]): r[4] for r in trainer.step_rows}
    for step, *norms in samples:
        # A layer's norm is its parameters' together: the layers' add up to the total.
        assert math.sqrt(sum(n * n for n in norms)) == pytest.approx(totals[int(step)], rel=1e-5)
        assert all(n > 0 for n in norms)

    steps = pd.read_csv(tmp_path / "steps.csv")
    assert list(steps.columns) == [
        "step", "epoch", "lr", "loss", "grad_norm", "grad_norm/body.0", "grad_norm/body.3"
    ]  # fmt: skip
    assert len(steps) == 20
    sampled = steps.dropna(subset=["grad_norm/body.0"])
    assert sampled["step"].tolist() == [1, 4, 8, 12, 16, 20]
    assert sampled["grad_norm/body.3"].to_numpy() == pytest.approx([s[2] for s in samples])


def test_sampling_off_leaves_steps_csv_as_before(tmp_path: Path) -> None:
    x, y = regression_data(96)
    writer = HistoryWriter(tmp_path)
    config = train_config(layer_grad_norm_every=0)
    trainer, _ = fit(
        tmp_path, make_net(), config, batches(x, y, 32), batches(x, y, 32), callbacks=[writer]
    )
    assert trainer.layer_names == [] and trainer.layer_rows == []
    columns = pd.read_csv(tmp_path / "steps.csv").columns.tolist()
    assert columns == ["step", "epoch", "lr", "loss", "grad_norm"]


def test_layer_samples_survive_a_resume_exactly(tmp_path: Path) -> None:
    x, y = regression_data(192)
    config = train_config(epochs=2, layer_grad_norm_every=2)
    reference, _ = fit(tmp_path / "a", make_net(), config, batches(x, y, 32), batches(x, y, 32))
    first = train_config(epochs=1, layer_grad_norm_every=2)
    fit(tmp_path / "b", make_net(), first, batches(x, y, 32), batches(x, y, 32))
    resumed, _ = fit(
        tmp_path / "b",
        make_net(),
        config,
        batches(x, y, 32),
        batches(x, y, 32),
        resume=tmp_path / "b" / LAST,
        callbacks=[HistoryWriter(tmp_path / "b")],
    )
    assert resumed.layer_rows == reference.layer_rows
    assert [int(s[0]) for s in resumed.layer_rows] == [1, 2, 4, 6, 8, 10, 12]
    steps = pd.read_csv(tmp_path / "b" / "steps.csv")
    assert steps.dropna(subset=["grad_norm/body.0"])["step"].tolist() == [1, 2, 4, 6, 8, 10, 12]


def test_layer_of_groups_a_modules_parameters() -> None:
    assert layer_of("body.0.weight") == "body.0"
    assert layer_of("body.0.bias") == "body.0"
    assert layer_of("scale") == "scale"


def test_gradient_flow_names_vanishing_layers_and_exploding_growth() -> None:
    layers = ["in", "mid", "out"]
    healthy = [(s, 0.5, 0.8, 1.0) for s in range(1, 9)]
    assert gradient_flow(layers, healthy) is None
    vanishing = [(s, 1e-6, 0.8, 1.0) for s in range(1, 9)]
    note = gradient_flow(layers, vanishing)
    assert note is not None and note.startswith("vanishing gradients: ")
    assert "in (1e-06)" in note and "mid" not in note
    exploding = [(s, 0.5 * 10.0**s, 0.5 * 10.0**s, 0.5 * 10.0**s) for s in range(1, 9)]
    note = gradient_flow(layers, exploding)
    assert note is not None and note.startswith("exploding gradients: ")
    assert "train.grad_clip" in note
    # Too little to judge: one sample, or nothing sampled.
    assert gradient_flow(layers, vanishing[:1]) is None
    assert gradient_flow([], []) is None
    # A non-finite sample (the step a NaN stopped) does not make every layer look vanishing.
    assert gradient_flow(layers, [*healthy, (9, math.nan, math.inf, 1.0)]) is None
    # A layer no gradient ever reached (unused by the forward pass) is not vanishing; one that
    # got a gradient once and then tiny ones is.
    assert gradient_flow(layers, [(s, 0.0, 0.8, 1.0) for s in range(1, 9)]) is None
    once = [(1, 1e-6, 0.8, 1.0), *[(s, 0.0, 0.8, 1.0) for s in range(2, 9)]]
    note = gradient_flow(layers, once)
    assert note is not None and "in (0)" in note


def test_a_run_tracks_layer_norms_and_reports_them(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    make_table("binary", rows=240).to_csv(tmp_path / "data.csv", index=False)
    config = config_dict(
        tmp_path / "data.csv",
        tmp_path / "runs",
        train={"epochs": 2, "layer_grad_norm_every": 3},
        track={"enabled": True},
        eval={"report": True},
    )
    run = mlsmith.train(config, progress=False)
    steps = pd.read_csv(run.path / "steps.csv")
    layer_columns = [c for c in steps.columns if c.startswith("grad_norm/")]
    assert layer_columns and {"grad_norm/body.0", "grad_norm/head"} <= set(layer_columns)
    sampled = steps.dropna(subset=layer_columns, how="all")["step"].tolist()
    assert sampled[0] == 1 and all(s % 3 == 0 for s in sampled[1:])

    client = MlflowClient(run.info["tracking_uri"])
    history = client.get_metric_history(run.info["mlflow_run_id"], "step/grad_norm/head")
    assert [m.step for m in history] == sampled
    assert np.allclose(
        [m.value for m in history], steps.set_index("step").loc[sampled, "grad_norm/head"]
    )
    html = (run.path / "report.html").read_text()
    assert 'alt="Gradient norm per layer"' in html
