"""Runs trained once per test session for the report tests: tiny tabular runs of every task
and tiny image and text runs. A test that changes a run works on a copy (``run_copy``)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.conftest import config_dict
from tests.image_data import image_config, make_images, write_npz
from tests.reports.report_data import CARD, train_tabular
from tests.text_data import make_texts

import mlsmith


@pytest.fixture(scope="session")
def binary_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Warmup, a cosine schedule and clipping, so the LR and gradient plots have some shape.
    return train_tabular(
        tmp_path_factory.mktemp("binary"),
        "binary",
        train={
            "epochs": 3,
            "batch_size": 32,
            "grad_clip": 1.0,
            "scheduler": {"name": "cosine", "warmup_epochs": 1},
        },
        card=CARD,
    )


@pytest.fixture(scope="session")
def multiclass_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tabular(tmp_path_factory.mktemp("multiclass"), "multiclass")


@pytest.fixture(scope="session")
def regression_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tabular(tmp_path_factory.mktemp("regression"), "regression")


@pytest.fixture(scope="session")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("image")
    images, labels = make_images(12, classes=3, size=(16, 16))
    npz = write_npz(root / "blobs.npz", images, labels)
    config = image_config(npz, root / "runs")
    config |= {"eval": {"bootstrap": 100, "baseline": False, "report": True}}  # the image grid
    config |= {"export": {"package": True}}  # the model card reads it
    return mlsmith.train(config, progress=False).path


@pytest.fixture(scope="session")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text")
    data = root / "texts.csv"
    make_texts("binary", rows=200).to_csv(data, index=False)
    config = config_dict(data, root / "runs", train={"epochs": 2, "batch_size": 32})
    config["data"] = {
        "type": "text",
        "path": str(data),
        "target": "label",
        "tokenizer": {"vocab_size": 300},
    }
    config["model"] = {"type": "bag", "dim": 8, "buckets": 4096}
    return mlsmith.train(config, progress=False).path


@pytest.fixture
def run_copy(tmp_path: Path) -> Callable[[Path], Path]:
    """``run_copy(run_dir)``: a copy of a session run that the test may damage."""

    def copy(run_dir: Path) -> Path:
        return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))

    return copy
