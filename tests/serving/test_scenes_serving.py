"""Segmentation and detection packages served over HTTP by a real `mlsmith serve` process:
v2 inference (JSON and the binary extension) and the plain JSON endpoint give what the run
predicts, MLflow's pyfunc loads the packages, and bad requests get a 400 that says why."""

from __future__ import annotations

import base64
import io
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from tests.serving.conftest import Server, start_server

import mlsmith
from mlsmith.data.shapes import CLASSES, write_shapes
from mlsmith.run import Run

SEG_CLASSES = ["background", *CLASSES]


@dataclass
class Scenes:
    segmentation: Run
    detection: Run
    images: list[Path]  # a few of the images, of two sizes


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Scenes:
    root = tmp_path_factory.mktemp("scene-serving")
    shapes = write_shapes(root / "shapes", 16, size=32, seed=5)
    common = {
        "output_dir": str(root / "runs"),
        "eval": {"bootstrap": 0, "report": False},
        "track": {"enabled": False},
    }
    seg = mlsmith.train(
        {
            "experiment": "seg",
            "data": {
                "type": "segmentation",
                "path": str(shapes / "images"),
                "masks": str(shapes / "masks"),
                "classes": SEG_CLASSES,
            },
            "model": {"type": "unet", "widths": [4, 8]},
            "train": {"epochs": 1, "batch_size": 8},
            **common,
        },
        progress=False,
        epoch_lines=False,
    )
    det = mlsmith.train(
        {
            "experiment": "det",
            "data": {
                "type": "detection",
                "path": str(shapes / "images"),
                "annotations": str(shapes / "annotations.json"),
            },
            "model": {"type": "fcos", "max_detections": 5},
            "train": {"epochs": 1, "batch_size": 8},
            **common,
        },
        progress=False,
        epoch_lines=False,
    )
    images = sorted((shapes / "images").iterdir())[:2]
    # A larger image than the canvas: the package scales it down and maps back to its size.
    big = root / "big.png"
    Image.open(images[0]).resize((48, 40)).save(big)
    return Scenes(seg, det, [*images, big])


@pytest.fixture(scope="module")
def server(scenes: Scenes) -> Iterator[Server]:
    started = start_server(
        [f"seg={scenes.segmentation.path}", f"det={scenes.detection.path}", "--no-batching"]
    )
    yield started
    started.stop()


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _frame(scenes: Scenes) -> pd.DataFrame:
    return pd.DataFrame({"path": [str(p) for p in scenes.images]})


def _infer(server: Server, name: str, images: list[Path], **extra: object) -> httpx.Response:
    body = {
        "inputs": [
            {
                "name": "path",
                "datatype": "BYTES",
                "shape": [len(images)],
                "data": [_b64(p) for p in images],
            }
        ],
        **extra,
    }
    return httpx.post(f"{server.url}/v2/models/{name}/infer", json=body, timeout=60)


def test_packages_are_written_by_training_and_load_in_mlflow_without_torch(
    scenes: Scenes, tmp_path: Path
) -> None:
    """MLflow's pyfunc loads both packages in a process where torch and mlsmith cannot be
    imported, and they predict from the files' bytes what the runs predict."""
    import subprocess
    import sys
    import textwrap

    for run in (scenes.segmentation, scenes.detection):
        assert run.info["package"]["status"] == "written"
    files = pd.DataFrame({"path": [p.read_bytes() for p in scenes.images]})
    files.to_pickle(tmp_path / "files.pkl")
    script = textwrap.dedent(
        f"""
        import sys

        class Blocked:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "mlsmith"):
                    raise ImportError(f"{{name}} is blocked in this test")
                return None

        sys.meta_path.insert(0, Blocked())
        import mlflow.pyfunc, pandas as pd
        files = pd.read_pickle({str(tmp_path / "files.pkl")!r})
        for name, package in (("seg", {str(scenes.segmentation.path / "package")!r}),
                              ("det", {str(scenes.detection.path / "package")!r})):
            out = mlflow.pyfunc.load_model(package).predict(files)
            out.to_pickle({str(tmp_path)!r} + f"/{{name}}.pkl")
        print(sorted(m for m in sys.modules if m.startswith(("torch", "mlsmith."))))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("[]")

    frame = _frame(scenes)
    masks = pd.read_pickle(tmp_path / "seg.pkl")
    assert list(masks.columns) == ["mask", "height", "width"]
    expected = scenes.segmentation.predict(frame)["mask"]
    for png, want in zip(masks["mask"], expected, strict=True):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), want)
    assert masks["height"].tolist() == [32, 32, 40] and masks["width"].tolist()[-1] == 48
    boxes = pd.read_pickle(tmp_path / "det.pkl")
    want = scenes.detection.predict(frame)
    assert list(boxes.columns) == ["row", "x_min", "y_min", "x_max", "y_max", "label", "score"]
    assert len(boxes) == len(want) and boxes["label"].tolist() == want["label"].tolist()
    columns = ["x_min", "y_min", "x_max", "y_max", "score"]
    np.testing.assert_allclose(boxes[columns], want[columns], atol=1e-3)


def test_segmentation_served_as_the_run_predicts(scenes: Scenes, server: Server) -> None:
    meta = httpx.get(f"{server.url}/v2/models/seg").json()
    assert meta["inputs"] == [{"name": "path", "datatype": "BYTES", "shape": [-1]}]
    assert meta["parameters"]["classes"] == SEG_CLASSES
    assert httpx.get(f"{server.url}/v2/models/seg/ready").json()["ready"] is True
    expected = scenes.segmentation.predict(_frame(scenes))["mask"].tolist()

    response = _infer(server, "seg", scenes.images, id="r1")
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert response.json()["id"] == "r1"
    masks = [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(v)))) for v in outputs["mask"]["data"]
    ]
    assert all(np.array_equal(m, e) for m, e in zip(masks, expected, strict=True))
    assert outputs["height"]["data"] == [32, 32, 40] and outputs["width"]["data"][2] == 48
    assert outputs["class_pixels"]["shape"] == [3, 4]
    counts = np.asarray(outputs["class_pixels"]["data"]).reshape(3, 4)
    assert counts[2].sum() == 40 * 48
    assert counts[0].tolist() == np.bincount(expected[0].ravel(), minlength=4).tolist()

    # The binary extension both ways: image files in, PNG masks out as raw bytes.
    blob = b"".join(struct.pack("<I", len(b)) + b for b in (p.read_bytes() for p in scenes.images))
    header = {
        "inputs": [
            {
                "name": "path",
                "datatype": "BYTES",
                "shape": [3],
                "parameters": {"binary_data_size": len(blob)},
            }
        ],
        "outputs": [{"name": "mask", "parameters": {"binary_data": True}}],
    }
    head = json.dumps(header).encode()
    response = httpx.post(
        f"{server.url}/v2/models/seg/infer",
        content=head + blob,
        headers={"Inference-Header-Content-Length": str(len(head))},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    size = int(response.headers["Inference-Header-Content-Length"])
    data = response.content[size:]
    (length,) = struct.unpack_from("<I", data, 0)
    first = np.asarray(Image.open(io.BytesIO(data[4 : 4 + length])))
    assert np.array_equal(first, expected[0])

    plain = httpx.post(
        f"{server.url}/v2/models/seg/predict",
        json={"rows": [{"path": _b64(p)} for p in scenes.images]},
        timeout=60,
    )
    assert plain.status_code == 200, plain.text
    predictions = plain.json()["predictions"]
    assert len(predictions) == 3 and set(predictions[0]["class_pixels"]) == set(SEG_CLASSES)
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(predictions[2]["mask"]))))
    assert np.array_equal(mask, expected[2])


def test_detection_served_as_the_run_predicts(scenes: Scenes, server: Server) -> None:
    frame = _frame(scenes)
    expected = scenes.detection.predict(frame)
    expected["row"] = expected["image"].map({p: i for i, p in enumerate(frame["path"])})

    response = _infer(server, "det", scenes.images)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["row"]["data"] == expected["row"].tolist()
    assert outputs["label"]["data"] == expected["label"].tolist()
    boxes = np.asarray(outputs["box"]["data"]).reshape(-1, 4)
    np.testing.assert_allclose(boxes, expected[["x_min", "y_min", "x_max", "y_max"]], atol=1e-3)
    np.testing.assert_allclose(outputs["score"]["data"], expected["score"], atol=1e-4)
    assert outputs["box"]["shape"] == [len(expected), 4]

    plain = httpx.post(
        f"{server.url}/v2/models/det/predict",
        json={"rows": [{"path": _b64(p)} for p in scenes.images]},
        timeout=60,
    )
    assert plain.status_code == 200, plain.text
    per_image = plain.json()["predictions"]
    assert [len(p["detections"]) for p in per_image] == [
        int((expected["row"] == i).sum()) for i in range(3)
    ]
    assert per_image[0]["detections"][0]["label"] == expected["label"].iloc[0]
    # The larger image's boxes are in its own pixels: within 48 x 40.
    assert all(d["x_max"] <= 48 and d["y_max"] <= 40 for d in per_image[2]["detections"])


@pytest.mark.parametrize(
    ("name", "body", "expected"),
    [
        ("seg", {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["x"]}]},
         "unknown input 'image'"),
        ("seg", {"inputs": []}, "non-empty 'inputs'"),
        ("seg", {"inputs": [{"name": "path", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
         "send BYTES"),
        ("det", {"inputs": [{"name": "path", "datatype": "BYTES", "shape": [1],
                             "data": ["not base64!"]}]}, "base64"),
        ("det", {"inputs": [{"name": "path", "datatype": "BYTES", "shape": [1],
                             "data": [base64.b64encode(b"no image here").decode()]}]},
         "cannot be read as an image"),
        ("seg", {"inputs": [{"name": "path", "datatype": "BYTES", "shape": [0], "data": []}]},
         "holds no images"),
    ],
)  # fmt: skip
def test_bad_infer_requests_get_400(
    server: Server, name: str, body: dict[str, object], expected: str
) -> None:
    response = httpx.post(f"{server.url}/v2/models/{name}/infer", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert expected in response.json()["error"]


def test_bad_plain_requests_and_feedback_get_400(scenes: Scenes, server: Server) -> None:
    url = f"{server.url}/v2/models/det"
    for body, expected in (
        ({"rows": "x"}, "'rows' must be a list"),
        ({"rows": [{"image": "x"}]}, "has no 'path'"),
        ({"rows": [{"path": 3}]}, "base64 text"),
        ({"rows": []}, "holds no images"),
    ):
        response = httpx.post(f"{url}/predict", json=body, timeout=30)
        assert response.status_code == 400 and expected in response.json()["error"], body
    response = _infer(server, "seg", scenes.images[:1], outputs=[{"name": "logits"}])
    assert response.status_code == 400 and "unknown output 'logits'" in response.json()["error"]
    response = httpx.post(
        f"{url}/feedback", json={"request_ids": ["a"], "labels": ["circle"]}, timeout=30
    )
    assert response.status_code == 400 and "detection model" in response.json()["error"]
    assert httpx.get(f"{server.url}/v2/models/det/versions/7").status_code == 404
    # The server still answers after every refusal.
    assert _infer(server, "det", scenes.images[:1]).status_code == 200
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'model="det"' in metrics and 'status="400"' in metrics
