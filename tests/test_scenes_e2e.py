"""Segmentation and detection end to end on the generated shapes: CLI train / evaluate /
predict, the report's figures, bad data and config, and exact resume after a real ``kill -9``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from tests.conftest import CliResult
from tests.test_resume import assert_same_weights, history, info, train, wait_for_checkpoint

import mlsmith
from mlsmith.data.shapes import CLASSES, write_shapes

SEG_CLASSES = ["background", *CLASSES]
PAYLOAD = Path("package", "data", "mlsmith")  # the package's payload, in MLflow's format


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("scenes") / "shapes", 24, size=32, seed=3)


def seg_config(shapes: Path, output: Path, **sections: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "experiment": "seg",
        "output_dir": str(output),
        "data": {
            "type": "segmentation",
            "path": str(shapes / "images"),
            "masks": str(shapes / "masks"),
            "classes": SEG_CLASSES,
        },
        "model": {"type": "unet", "widths": [8, 16]},
        "train": {"epochs": 2, "batch_size": 8, "optimizer": {"lr": 0.01}},
        "eval": {"bootstrap": 50},
        # Written by `mlsmith export` where a test needs it (the serving tests check training's).
        "export": {"package": False},
        "track": {"enabled": False},  # MLflow is the same for every kind: tests/test_tracking.py
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return config


def write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_segmentation_cli_train_evaluate_predict(
    cli: Callable[..., CliResult], shapes: Path, tmp_path: Path
) -> None:
    config = write(tmp_path / "seg.yaml", seg_config(shapes, tmp_path / "runs"))
    result = cli("train", config, "--no-progress")
    assert result.code == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    assert "miou" in result.stdout and "per class" in result.stdout

    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["test"]
    for key in ("miou", "dice", "pixel_accuracy"):
        assert 0.0 <= test[key]["value"] <= 1.0
        low, high = test[key]["ci95"]
        assert low <= test[key]["value"] <= high
    assert list(test["per_class"]) == SEG_CLASSES
    state = json.loads((run_dir / "preprocessing.json").read_text())
    frequencies = state["class_frequencies"]  # of the training masks' labelled pixels
    assert len(frequencies) == 4 and sum(frequencies) == pytest.approx(1.0)
    assert frequencies[0] > 0.5  # mostly background
    rows = history(run_dir)
    assert {"val/miou", "val/dice", "val/loss"} <= set(rows.columns)
    # The best checkpoint is picked on val/miou, the data kind's default.
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["checkpoint"]["monitor"] == "val/miou"
    assert info(run_dir)["best_epoch"] == int(rows.loc[rows["val/miou"].idxmax(), "epoch"])
    assert (run_dir / "scene_grid.png").stat().st_size > 1000
    report = (run_dir / "report.html").read_text()
    assert "Validation images" in report and "Per-class metrics" in report

    result = cli("evaluate", run_dir, "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["test"] == test

    out = tmp_path / "masks"
    result = cli("predict", run_dir, "--input", shapes / "images", "--output", out)
    assert result.code == 0, result.stderr
    written = sorted(out.iterdir())
    assert [p.name for p in written] == sorted(p.name for p in (shapes / "images").iterdir())
    mask = np.asarray(Image.open(written[0]))
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 1, 2, 3}

    # The Python API predicts a frame of image paths into masks.
    run = mlsmith.load_run(run_dir)
    frame = run.preprocessor.read(str(shapes / "images"))
    masks = run.predict(frame.head(2))
    assert np.array_equal(masks["mask"].iloc[0], mask)

    # Masks go into a folder, never over a table.
    result = cli("predict", run_dir, "--input", shapes / "images", "--output", tmp_path / "m.csv")
    assert result.code == 2 and "folder" in result.stderr

    # The package (ONNX: uint8 canvas images in, logits out): checked against the torch
    # network, then from the image files against predict.
    result = cli("export", run_dir, "--dockerfile")
    assert result.code == 0, result.stderr
    assert info(run_dir)["package"]["status"] == "written"
    assert (
        "pixel classes agree 100.00%" in result.stderr and "pixels agree 100.00%" in result.stderr
    )
    assert (run_dir / "package" / "Dockerfile").is_file()
    export = json.loads((run_dir / PAYLOAD / "export.json").read_text())
    record = export["formats"]["onnx"]
    assert record["max_abs_diff"] <= 1e-5 and export["rows_checked"] == 4  # the test split
    assert export["package_check"]["pixel_agreement"] == 1.0
    import onnxruntime

    session = onnxruntime.InferenceSession(str(run_dir / PAYLOAD / "model.onnx"))
    pixels = run.preprocessor.transform(frame.head(1))["image"]
    (logits,) = session.run(None, {"image": pixels})
    assert np.array_equal(logits[0].argmax(axis=0), mask)
    # Without torch: the package decodes the files and maps masks back to each image's size.
    package = mlsmith.load_package(run_dir)
    assert np.array_equal(package.masks(frame.head(1))[0], mask)
    result = cli("export", run_dir, "--quantize", "int8")
    assert result.code == 2 and "ONNX as trained" in result.stderr


def test_images_of_different_sizes_share_a_canvas_and_map_back(
    cli: Callable[..., CliResult], shapes: Path, tmp_path: Path
) -> None:
    # A third of the images cut to 24x28: the canvas is the largest (32x32), masks padded.
    root = tmp_path / "mixed"
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
        for i, source in enumerate(sorted((shapes / folder).iterdir())):
            image = Image.open(source)
            (image.crop((0, 0, 28, 24)) if i % 3 == 0 else image).save(root / folder / source.name)
    config = seg_config(root, tmp_path / "runs", train={"epochs": 1})
    config["data"].update(path=str(root / "images"), masks=str(root / "masks"))
    result = cli("train", write(tmp_path / "mixed.yaml", config), "--no-progress")
    assert result.code == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    state = json.loads((run_dir / "preprocessing.json").read_text())
    assert (state["height"], state["width"], state["fixed"]) == (32, 32, False)
    out = tmp_path / "out"
    assert cli("predict", run_dir, "-i", root / "images", "-o", out).code == 0
    assert np.asarray(Image.open(out / "0000.png")).shape == (24, 28)
    assert np.asarray(Image.open(out / "0001.png")).shape == (32, 32)

    # data.image_size scales every image onto a square canvas (masks with nearest-neighbour,
    # padding ignored), and a predicted canvas mask maps back to the image's own pixels.
    from mlsmith import families
    from mlsmith.runtime.scenes import IGNORE_INDEX, unplace_mask

    config["data"]["image_size"] = 16
    prepared = families.data_kind("segmentation").prepare(mlsmith.load_config(config))
    state = prepared.preprocessor.to_dict()
    assert (state["height"], state["width"], state["fixed"]) == (16, 16, True)
    split = prepared.train
    cut = np.flatnonzero(split.inputs["geometry"][:, 0] == 24)[0]
    height, width, scale = split.inputs["geometry"][cut]
    assert (height, width) == (24, 28) and scale == pytest.approx(16 / 28)
    mask = split.target[cut]
    assert (mask[14:] == IGNORE_INDEX).all() and (mask[:13] != IGNORE_INDEX).all()
    assert unplace_mask(mask, split.inputs["geometry"][cut]).shape == (24, 28)


def test_check_finds_images_shared_between_splits(shapes: Path, tmp_path: Path) -> None:
    """`mlsmith check` on scenes: every image given twice (another name, the same pixels) puts
    copies of validation and test images in train, which the duplicates check names."""
    import shutil

    copied = tmp_path / "shapes"
    shutil.copytree(shapes, copied)
    for folder in ("images", "masks"):
        for file in sorted((copied / folder).iterdir()):
            shutil.copy(file, file.with_name("copy-" + file.name))
    report = mlsmith.check(seg_config(copied, tmp_path / "runs"), quick=True)
    found = {r.name: r for r in report.results}
    duplicates = found["duplicates across splits"]
    assert duplicates.status == "fail", duplicates.detail
    assert "images" in duplicates.detail and "also in train" in duplicates.detail
    assert found["raw rows"].status == "skip"
    clean = mlsmith.check(seg_config(shapes, tmp_path / "runs"), quick=True)
    assert {r.name: r for r in clean.results}["duplicates across splits"].status == "pass"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("missing mask", "have no mask"),
        ("mask size", "a mask must match its image"),
        ("unknown id", "not below the 4 classes"),
        ("wrong model", "use one of: unet, fcn, deeplabv3"),
        ("val_path", "val_path"),
    ],
)
def test_bad_segmentation_data_and_config_exit_2(
    cli: Callable[..., CliResult], shapes: Path, tmp_path: Path, change: str, expected: str
) -> None:
    root = tmp_path / "bad"
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
        for source in sorted((shapes / folder).iterdir())[:12]:
            (root / folder / source.name).write_bytes(source.read_bytes())
    config = seg_config(root, tmp_path / "runs")
    config["data"].update(path=str(root / "images"), masks=str(root / "masks"))
    if change == "missing mask":
        (root / "masks" / "0003.png").unlink()
    elif change == "mask size":
        Image.new("L", (20, 20)).save(root / "masks" / "0004.png")
    elif change == "unknown id":
        Image.fromarray(np.full((32, 32), 7, np.uint8)).save(root / "masks" / "0005.png")
    elif change == "wrong model":
        config["model"] = {"type": "cnn"}
    else:
        config["data"]["val_path"] = str(root / "images")
    result = cli("train", write(tmp_path / "bad.yaml", config), "--no-progress")
    assert result.code == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "runs").glob("*/*/run.json"))


def test_kill_9_mid_training_then_resume_is_bit_identical(shapes: Path, tmp_path: Path) -> None:
    config = seg_config(
        shapes,
        tmp_path / "reference",
        train={
            "epochs": 3,
            "batch_size": 4,
            "checkpoint": {"every_n_steps": 1},
            "preflight": False,
        },
        data={"augment": {"hflip": True, "scale_jitter": [0.8, 1.2], "crop": True}},
        eval={"bootstrap": 0, "report": False},
        track={"enabled": False},
    )
    reference = train(write(tmp_path / "ref.yaml", config))

    config["output_dir"] = str(tmp_path / "killed")
    killed_config = write(tmp_path / "killed.yaml", config)
    process = subprocess.Popen(
        [sys.executable, "-m", "mlsmith", "train", str(killed_config), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_step(tmp_path / "killed", process, step=6)  # epoch 2, mid-epoch
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    run_dir = next((tmp_path / "killed").glob("seg/*"))
    assert info(run_dir)["status"] == "running"  # killed: nothing could record it
    resumed = train(killed_config, "--resume", run_dir)
    assert resumed == run_dir
    assert_same_weights(run_dir, reference)
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(
        (reference / "metrics.json").read_text()
    )
    assert history(run_dir)["val/miou"].tolist() == history(reference)["val/miou"].tolist()


def _wait_for_step(output: Path, process: subprocess.Popen[bytes], step: int) -> None:
    wait_for_checkpoint(output, process, lambda loop: loop["global_step"] >= step)


def det_config(shapes: Path, output: Path, **sections: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "experiment": "det",
        "output_dir": str(output),
        "data": {
            "type": "detection",
            "path": str(shapes / "images"),
            "annotations": str(shapes / "annotations.json"),
        },
        "model": {"type": "fcos", "backbone": "small"},
        "train": {"epochs": 2, "batch_size": 8},
        "eval": {"bootstrap": 50},
        "export": {"package": False},
        "track": {"enabled": False},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return config


def test_detection_api_and_cli_train_evaluate_predict(
    cli: Callable[..., CliResult], shapes: Path, tmp_path: Path
) -> None:
    from pycocotools.coco import COCO

    run = mlsmith.train(det_config(shapes, tmp_path / "runs"), progress=False)
    test = run.metrics["test"]
    for key in ("map_50", "map_50_95"):
        assert 0.0 <= test[key]["value"] <= 1.0
    assert list(test["per_class"]) == list(CLASSES)
    rows = history(run.path)
    # The detector's own losses, per component; no validation loss (eval gives detections).
    assert {"train/classification", "train/bbox_regression", "val/map_50"} <= set(rows.columns)
    assert "val/loss" not in rows.columns
    total = rows[["train/classification", "train/bbox_regression", "train/bbox_ctrness"]]
    np.testing.assert_allclose(total.sum(axis=1), rows["train/loss"], rtol=1e-4)
    assert run.config.train.early_stopping.monitor == "val/map_50"
    assert (run.path / "pr_curves.png").is_file() and (run.path / "scene_grid.png").is_file()
    assert "Precision-recall curves" in (run.path / "report.html").read_text()

    frame = run.preprocessor.read(str(shapes / "images"))
    found = run.predict(frame.head(3))
    assert list(found.columns) == ["image", "x_min", "y_min", "x_max", "y_max", "label", "score"]
    assert set(found["label"]) <= set(CLASSES) and found["score"].between(0, 1).all()
    assert (found["x_max"] > found["x_min"]).all() and (found["x_max"] <= 32).all()

    result = cli("predict", run.path, "-i", shapes / "images", "-o", tmp_path / "boxes.csv")
    assert result.code == 0, result.stderr
    import pandas as pd

    boxes = pd.read_csv(tmp_path / "boxes.csv")
    first = boxes[boxes["image"] == frame["path"].iloc[0]].reset_index(drop=True)
    expected = found[found["image"] == frame["path"].iloc[0]].reset_index(drop=True)
    # The same boxes, whatever the batch (float sums differ in the last bits between batchings).
    pd.testing.assert_frame_equal(first, expected, check_dtype=False, atol=1e-3)
    # COCO results: what COCO's own tools load against the ground truth.
    result = cli("predict", run.path, "-i", shapes / "images", "-o", tmp_path / "boxes.json")
    assert result.code == 0, result.stderr
    entries = json.loads((tmp_path / "boxes.json").read_text())
    assert len(entries) == len(boxes)
    assert {e["file_name"] for e in entries} <= {p.name for p in (shapes / "images").iterdir()}
    truth = COCO(str(shapes / "annotations.json"))
    truth.loadRes(str(tmp_path / "boxes.json"))
    result = cli("predict", run.path, "-i", shapes / "images", "-o", tmp_path / "boxes.txt")
    assert result.code == 2 and ".csv" in result.stderr

    result = cli("evaluate", run.path, "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["test"] == test

    # ONNX (one image per call): the same detections as predict, image 0 on its own canvas.
    result = cli("export", run.path)
    assert result.code == 0, result.stderr
    export = json.loads((run.path / PAYLOAD / "export.json").read_text())
    record = export["formats"]["onnx"]
    assert record["batch"] == 1 and record["max_abs_diff"] <= record["tolerance"]
    assert export["package_check"]["box_agreement"] == 1.0 and "boxes agree" in result.stderr
    import onnxruntime

    session = onnxruntime.InferenceSession(str(run.path / PAYLOAD / "model.onnx"))
    (raw,) = session.run(None, {"image": run.preprocessor.transform(frame.head(1))["image"]})
    kept = raw[0][raw[0][:, 5] > 0]
    np.testing.assert_allclose(kept[:, 4], expected["score"], atol=1e-4)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("no annotations", "annotations file not found"),
        ("monitor", "unknown metric 'val/loss'"),
        ("segmentation model", "use one of: fcos, fasterrcnn, retinanet"),
    ],
)
def test_bad_detection_config_exit_2(
    cli: Callable[..., CliResult], shapes: Path, tmp_path: Path, change: str, expected: str
) -> None:
    config = det_config(shapes, tmp_path / "runs")
    if change == "no annotations":
        config["data"]["annotations"] = str(tmp_path / "missing.json")
    elif change == "monitor":
        config["train"]["checkpoint"] = {"monitor": "val/loss"}
    else:
        config["model"] = {"type": "unet"}
    result = cli("train", write(tmp_path / "bad.yaml", config), "--no-progress")
    assert result.code == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
