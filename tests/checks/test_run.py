"""run_checks (``mlsmith check``) and preflight (the start of ``train``) end to end."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tests.conftest import make_table
from tests.image_data import image_config, make_images, write_npz
from tests.text_data import make_texts

from mlsmith import families
from mlsmith.checks import CheckReport, preflight
from mlsmith.config import Config, load_config
from mlsmith.models.base import FitContext
from mlsmith.models.neural import NeuralModel
from mlsmith.pipeline import check as run_checks
from mlsmith.training.reproducibility import seed_everything

TableConfig = Callable[..., Config]


def statuses(report: CheckReport) -> dict[str, str]:
    return {r.name: r.status for r in report.results}


def test_a_clean_table_passes_everything(table_config: TableConfig) -> None:
    # Wide enough to memorise a batch quickly at lr 1e-3 (hidden [16] needs ~900 steps).
    report = run_checks(table_config(make_table("binary"), model={"hidden": [64, 32]}))
    assert not report.failed and not report.warnings, report.results
    assert [r.group for r in report.results] == (
        ["config"] + ["data"] * 5 + ["splits"] * 5 + ["model"] * 6 + ["cost"]
    )
    assert statuses(report)["one-batch overfit"] == "pass"
    assert report.results[0].detail.startswith("model.type 'mlp' on data.type 'tabular'")


def test_the_report_serialises_to_the_preflight_json_shape(table_config: TableConfig) -> None:
    report = run_checks(table_config(make_table("binary")), quick=True)
    state = json.loads(json.dumps(report.to_dict()))
    assert state["quick"] is True
    assert set(state) == {"quick", "results"}
    assert all(set(row) == {"group", "name", "status", "detail"} for row in state["results"])
    assert CheckReport.from_dict(state) == report
    assert statuses(report)["one-batch overfit"] == "skip"


def test_a_learning_rate_too_low_to_overfit_fails_with_causes(table_config: TableConfig) -> None:
    report = run_checks(table_config(make_table("binary"), overrides=["train.optimizer.lr=1e-9"]))
    assert report.failed
    (failure,) = report.failures
    assert failure.name == "one-batch overfit"
    assert "learning rate too low" in failure.detail


def test_unreadable_data_is_a_failed_row_not_a_crash(table_config: TableConfig) -> None:
    frame = make_table("binary").rename(columns={"label": "outcome"})  # no 'label' column
    report = run_checks(table_config(frame))
    assert report.failed
    row = report.failures[0]
    assert (row.group, row.name) == ("data", "data readable")
    assert "label" in row.detail
    assert {r.status for r in report.results[2:]} == {"skip"}


def test_run_checks_leaves_the_global_rngs_alone(table_config: TableConfig) -> None:
    config = table_config(make_table("binary"))
    seed_everything(123)
    expected = draw()
    seed_everything(123)
    run_checks(config, quick=True)
    assert_same_draws(draw(), expected)


# --- preflight --------------------------------------------------------------------------------


def test_preflight_leaves_weights_buffers_and_rngs_untouched(table_config: TableConfig) -> None:
    # Batch norm: its running statistics change on any forward pass in training mode.
    config = table_config(make_table("multiclass"), model={"norm": "batch", "dropout": 0.2})
    seed_everything(config.seed)
    data = families.data_kind("tabular").prepare(config)
    seed_everything(config.seed)
    model = families.model_family("mlp")(config, data.preprocessor)
    assert isinstance(model, NeuralModel)
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    rng = (torch.get_rng_state(), numpy_state(), random.getstate())

    report = preflight(config, data, model)

    assert report.quick and not report.failed
    after = model.network.state_dict()
    assert any("running_mean" in k for k in after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.network.parameters())
    assert torch.equal(torch.get_rng_state(), rng[0])
    kind, keys, *rest = numpy_state()
    assert kind == rng[1][0] and np.array_equal(keys, rng[1][1]) and rest == list(rng[1][2:])
    assert random.getstate() == rng[2]
    assert statuses(report)["one-batch overfit"] == "skip"
    assert statuses(report)["training cost"] == "pass"


def test_training_after_preflight_is_bit_identical(
    table_config: TableConfig, tmp_path: Path
) -> None:
    config = table_config(make_table("binary"), model={"norm": "batch", "dropout": 0.3})

    def train(with_preflight: bool) -> dict[str, torch.Tensor]:
        seed_everything(config.seed)
        data = families.data_kind("tabular").prepare(config)
        seed_everything(config.seed)
        model = families.model_family("mlp")(config, data.preprocessor)
        assert isinstance(model, NeuralModel)
        if with_preflight:
            preflight(config, data, model)
        model.fit(data, FitContext(run_dir=tmp_path / f"run-{with_preflight}"))
        return model.network.state_dict()

    plain, checked = train(False), train(True)
    assert all(torch.equal(plain[k], checked[k]) for k in plain)


# --- other data kinds -------------------------------------------------------------------------


def test_text_data_runs_through_every_check(tmp_path: Path) -> None:
    path = tmp_path / "texts.csv"
    make_texts("binary", rows=160).to_csv(path, index=False)
    report = run_checks(text_config(path, tmp_path))
    assert not report.failed, report.failures
    results = {r.name: r for r in report.results}
    assert results["task"].detail == "binary: 2 classes 'negative', 'positive' (inferred)"
    assert results["missing values"].detail == "0.0% of training texts are empty"
    assert results["single-feature leakage"].status == "skip"
    assert results["gradient flow"].status == "pass"  # the bag's zero head is not a dead layer
    assert results["one-batch overfit"].status == "pass"
    assert results["training cost"].status == "pass"


def test_empty_and_repeated_texts_warn_and_explain_the_overfit_floor(tmp_path: Path) -> None:
    frame = make_texts("binary", rows=160)
    frame.loc[:39, "text"] = ""  # 25% empty texts, of both labels
    frame = pd.concat([frame, frame.iloc[60:100]], ignore_index=True)  # rows in two splits
    path = tmp_path / "texts.csv"
    frame.to_csv(path, index=False)
    results = {r.name: r for r in run_checks(text_config(path, tmp_path)).results}
    assert results["missing values"].status == "warn"
    assert "of training texts are empty" in results["missing values"].detail
    assert results["duplicates across splits"].status == "fail"
    assert results["one-batch overfit"].status == "fail"
    assert "the same inputs as a row with another label" in results["one-batch overfit"].detail


def test_image_data_runs_through_every_check(tmp_path: Path) -> None:
    images, labels = make_images(12, classes=3, size=(16, 16))
    images = np.concatenate([images, images[:6]])  # six images twice, same labels
    labels = np.concatenate([labels, labels[:6]])
    npz = write_npz(tmp_path / "digits.npz", images, labels)
    raw: dict[str, Any] = image_config(npz, tmp_path / "runs", target="label")
    report = run_checks(load_config(raw))
    results = {r.name: r for r in report.results}
    assert [r.name for r in report.failures] == ["duplicates across splits"]
    assert "also in train" in results["duplicates across splits"].detail
    assert results["one-batch overfit"].status == "pass"
    assert results["task"].detail == "multiclass: 3 classes 0, 1, 2 (inferred)"
    assert results["constant columns"].status == "skip"
    assert results["output shape"].status == "pass"
    assert results["initial loss"].status == "pass"
    assert results["gradient flow"].status == "pass"


def test_streamed_images_skip_the_duplicate_check(tmp_path: Path) -> None:
    images, labels = make_images(8, classes=2, size=(16, 16))
    npz = write_npz(tmp_path / "digits.npz", images, labels)
    raw: dict[str, Any] = image_config(npz, tmp_path / "runs", target="label", cache="stream")
    raw["data"]["num_workers"] = 0
    report = run_checks(load_config(raw), quick=True)
    results = {r.name: r for r in report.results}
    assert results["duplicates across splits"].status == "skip"
    assert not report.failed, report.failures
    assert results["training cost"].status == "pass"


# --- helpers ----------------------------------------------------------------------------------


def text_config(path: Path, tmp_path: Path) -> Config:
    return load_config(
        {
            "experiment": "text",
            "seed": 0,
            "output_dir": str(tmp_path / "runs"),
            "data": {
                "type": "text",
                "path": str(path),
                "target": "label",
                "tokenizer": {"vocab_size": 300},
            },
            "model": {"type": "bag", "dim": 16, "buckets": 4096},
            "train": {"epochs": 2, "batch_size": 32, "optimizer": {"lr": 0.2}},
            "track": {"enabled": False},
        }
    )


def numpy_state() -> tuple[Any, ...]:
    state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    return state


def draw() -> list[float]:
    return [random.random(), float(np.random.rand()), float(torch.rand(1))]


def assert_same_draws(a: list[float], b: list[float]) -> None:
    assert a == b
