"""The report's grid of test images (most surely right, most surely wrong, most confused)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from tests.conftest import config_dict
from tests.image_data import make_images, write_folder

import mlsmith
from mlsmith.reports.evaluation_plots import GRID_FILE, prediction_grid


def test_an_image_run_reports_its_prediction_grid(tmp_path: Path) -> None:
    images, labels = make_images(60, classes=3, size=(16, 16), seed=1)
    config = config_dict("unused", tmp_path / "runs", train={"epochs": 2, "batch_size": 16})
    config["data"] = {"type": "image", "path": str(write_folder(tmp_path / "img", images, labels))}
    config["model"] = {"type": "cnn", "channels": [8], "depth": 1}
    config["eval"]["report"] = True
    run = mlsmith.train(config, progress=False)
    png = (run.path / GRID_FILE).read_bytes()
    width, height = Image.open(io.BytesIO(png)).size
    assert width > 400 and height > 200
    assert "Test images" in (run.path / "report.html").read_text()


def test_the_grid_picks_right_wrong_and_confused_images() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(20, 1, 8, 8), dtype=np.uint8)
    truth = np.array([0, 1] * 10)
    proba = np.tile([0.9, 0.1], (20, 1))  # always class 0, surely: half right, half wrong
    proba[:2] = [0.5, 0.5]  # two undecided
    png = prediction_grid(images, truth, proba, ["cat", "dog"])
    assert png is not None and png.startswith(b"\x89PNG")
    assert prediction_grid(images[:0], truth[:0], proba[:0], ["cat", "dog"]) is None
