"""Writing a segmentation or detection run's package: its network in ONNX, in MLflow's format.

The exported graph takes what the data kind's batches start from, uint8 images on the run's
canvas (N, C, H, W), normalises them as training did and runs the network: a segmentation
network gives logits (N, classes, H, W), a detector its detections (N, K, 6): x_min, y_min,
x_max, y_max, score, label. A detector's graph takes one image at a time (see
:func:`_detector_to_onnx`).

Two checks, on the run's held-out images (the test split, else validation), before the package
replaces its destination: the graph in ONNX Runtime against the torch graph (the largest
absolute difference of the outputs; for detections in pixels, so the tolerance is times the
canvas side), then the finished package, loaded by the runtime from raw image files, against
``mlsmith predict`` (every pixel's class; every box, label and score). The package is served by
:mod:`mlsmith.runtime.scene_package`; ``mlflow.pyfunc`` and ``mlsmith serve`` load it.
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.data.base import PREPROCESSING_FILE
from mlsmith.files import write_json
from mlsmith.runtime.package import DATA_DIR, EXPORT_FILE, PACKAGE_FILE, PAYLOAD_DIR

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.models.base import Model
    from mlsmith.packaging.writer import CheckRows

BATCH = 8
# What inference imports: the package decodes images with Pillow and runs ONNX Runtime.
REQUIREMENTS = ("mlflow-skinny", "numpy", "pandas", "onnxruntime", "pillow")
# Share of the check images' pixels whose class the package must give as `mlsmith predict` does
# (ONNX Runtime's float differences can flip a pixel whose two best logits all but tie).
PIXEL_AGREEMENT = 0.999
# Share of the boxes the package must find as `mlsmith predict` does (see compare_boxes).
BOX_AGREEMENT = 0.99


def write_scene_package(
    run_dir: Path,
    model: Model,
    rows: CheckRows,
    *,
    tolerance: float,
    output: Path,
    run_name: str,
) -> dict[str, Any]:
    """Write and verify the package of a segmentation or detection ``model`` at ``output``
    (whole or not at all); returns ``export.json``. :class:`ExportError` when the ONNX graph
    or the finished package does not reproduce the torch model."""
    import torch

    from mlsmith.packaging.formats import ONNX_FILE, to_onnx
    from mlsmith.packaging.graphs import inference_graph
    from mlsmith.packaging.writer import (
        PACKAGE_DIR,
        ExportError,
        installed_version,
        package_workspace,
        replace_folder,
    )
    from mlsmith.runtime.engines import OnnxEngine

    started = time.perf_counter()
    kind = model.task.kind
    images = model.preprocessor.transform(rows.frame, rows.source)["image"]
    network = copy.deepcopy(model.network).cpu().eval()  # type: ignore[attr-defined]
    graph = inference_graph(network, model.preprocessor)
    with torch.inference_mode():
        reference = np.concatenate(
            [
                graph(torch.from_numpy(images[i : i + BATCH])).numpy()
                for i in range(0, len(images), BATCH)
            ]
        )
    with package_workspace(output) as work:
        payload = work / PAYLOAD_DIR
        payload.mkdir()
        if kind == "detection":
            record = _detector_to_onnx(graph, images[:1], payload / ONNX_FILE)
        else:
            record = to_onnx(graph, {"image": images[:2]}, payload / ONNX_FILE)
        record["export_seconds"] = round(time.perf_counter() - started, 2)
        engine = OnnxEngine(payload / ONNX_FILE, providers=["CPUExecutionProvider"])
        step = record.get("batch") or BATCH
        found = np.concatenate(
            [engine.raw({"image": images[i : i + step]}) for i in range(0, len(images), step)]
        )
        record |= _parity(kind, reference, found)
        # Boxes are in pixels: their tolerance scales with the canvas.
        allowed = tolerance * (max(images.shape[-2:]) if kind == "detection" else 1)
        record["tolerance"] = allowed
        if record["max_abs_diff"] > allowed:
            raise ExportError(
                f"the onnx export diverges from the torch model: max |difference| of the "
                f"{record['compared']} is {record['max_abs_diff']:.3g} (tolerance "
                f"{allowed:g}); nothing was written. Raise export.tolerance only if that "
                "difference is acceptable"
            )
        record["bytes"] = (payload / ONNX_FILE).stat().st_size
        shutil.copyfile(Path(run_dir) / PREPROCESSING_FILE, payload / PREPROCESSING_FILE)
        info = {
            "format_version": 1,
            "family": model.family,
            "kind": kind,
            "engine": "onnx",
            "model_file": ONNX_FILE,
            "batch_size": 1 if kind == "detection" else BATCH,
            "run": run_name,
            "mlsmith_version": installed_version("mlsmith"),
        }
        write_json(payload / PACKAGE_FILE, info)
        export: dict[str, Any] = {
            "serves": "onnx",
            "task": kind,
            "tolerance": tolerance,
            "rows_checked": len(rows.frame),
            "rows_source": rows.source,
            "formats": {"onnx": record},
        }
        write_json(payload / EXPORT_FILE, export)
        package_dir = work / PACKAGE_DIR
        _save_mlflow_model(package_dir, payload, kind, info)
        export["package_check"] = _check_package(package_dir, model, rows, allowed)
        export["seconds"] = round(time.perf_counter() - started, 2)
        write_json(package_dir / DATA_DIR / PAYLOAD_DIR / EXPORT_FILE, export)
        replace_folder(package_dir, output)
    return export


def _detector_to_onnx(graph: Any, example: np.ndarray, file: Path) -> dict[str, Any]:
    """A detector through the TorchScript-based exporter, for one image at a time.

    torch.export (the dynamo exporter) refuses torchvision's detectors: their post-processing
    has data-dependent shapes. The TorchScript-based exporter traces them, with the batch split
    into images fixed at trace time, so the graph takes one image; a caller loops over images.
    """
    import contextlib
    import io
    import warnings

    import torch

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (torch.from_numpy(np.ascontiguousarray(example)),),
            str(file),
            input_names=["image"],
            output_names=["raw"],
            opset_version=17,
            dynamo=False,
        )
    return {"file": file.name, "opset": 17, "inputs": ["image"], "outputs": ["raw"], "batch": 1}


def _parity(kind: str, reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    from mlsmith.packaging.writer import ExportError

    if reference.shape != candidate.shape:
        raise ExportError(
            f"the onnx export gives outputs of shape {candidate.shape}, the torch model "
            f"{reference.shape}; nothing was written"
        )
    record: dict[str, Any] = {
        "compared": "logits" if kind == "segmentation" else "detections",
        "max_abs_diff": float(np.abs(reference - candidate).max(initial=0.0)),
    }
    if kind == "segmentation":
        same = reference.argmax(axis=1) == candidate.argmax(axis=1)
        record["pixel_agreement"] = float(same.mean()) if same.size else 1.0
    return record


def _save_mlflow_model(package_dir: Path, payload: Path, kind: str, info: dict[str, Any]) -> None:
    """MLflow's model folder: image files' bytes in (a ``path`` column), masks or boxes out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    from mlsmith.packaging.writer import installed_version, save_pyfunc

    outputs: list[ColSpec | TensorSpec]
    if kind == "segmentation":
        outputs = [ColSpec("binary", "mask"), ColSpec("long", "height"), ColSpec("long", "width")]
    else:
        outputs = [ColSpec("long", "row")]
        outputs += [ColSpec("double", c) for c in ("x_min", "y_min", "x_max", "y_max")]
        outputs += [ColSpec("string", "label"), ColSpec("double", "score")]
    signature = ModelSignature(inputs=Schema([ColSpec("binary", "path")]), outputs=Schema(outputs))
    save_pyfunc(
        package_dir,
        payload,
        signature=signature,
        input_example=None,  # MLflow stores examples as JSON, which holds no bytes
        pip_requirements=[f"{name}=={installed_version(name)}" for name in REQUIREMENTS],
        info=info,
    )


def _check_package(
    package_dir: Path, model: Model, rows: CheckRows, allowed: float
) -> dict[str, Any]:
    """The finished package, from the check images' files, against ``mlsmith predict``."""
    from mlsmith.packaging.writer import ExportError
    from mlsmith.runtime.scene_package import ScenePackage
    from mlsmith.scene_prediction import predict_scenes

    package = ScenePackage(package_dir, providers=["CPUExecutionProvider"])
    expected = predict_scenes(model, rows.frame)
    record: dict[str, Any] = {"images": len(rows.frame), "compared_with": "mlsmith predict"}
    if package.kind == "segmentation":
        got = package.masks(rows.frame, rows.source)
        same = sum(int((g == e).sum()) for g, e in zip(got, expected["mask"], strict=True))
        pixels = sum(int(e.size) for e in expected["mask"])
        record["pixel_agreement"] = same / max(pixels, 1)
        if record["pixel_agreement"] < PIXEL_AGREEMENT:
            raise ExportError(
                "the finished package does not reproduce mlsmith predict on the "
                f"{rows.source}: {record['pixel_agreement']:.4%} of the pixels agree "
                f"(at least {PIXEL_AGREEMENT:.1%} needed)"
            )
        return record
    record |= compare_boxes(
        package.predict(rows.frame, rows.source), expected, rows.frame, tolerance=allowed
    )
    if record["box_agreement"] < BOX_AGREEMENT:
        raise ExportError(
            f"the finished package does not reproduce mlsmith predict on the {rows.source}: "
            f"{record['box_agreement']:.2%} of the boxes agree (at least {BOX_AGREEMENT:.0%} "
            "needed)"
        )
    return record


def compare_boxes(
    got: pd.DataFrame, expected: pd.DataFrame, frame: pd.DataFrame, *, tolerance: float
) -> dict[str, Any]:
    """How far the package's boxes (a ``row`` column) agree with ``mlsmith predict``'s (an
    ``image`` column of ``frame``'s paths): image by image, each expected box is matched to an
    unmatched box of the same label whose corners are within ``tolerance`` pixels.

    ``box_agreement`` is the matched share of the larger of the two counts; ``max_abs_diff``
    the largest corner difference of a matched pair. Exact agreement is not asked: where two
    overlapping boxes score alike, or a box's overlap sits at the NMS threshold, float
    differences between the runtimes can keep the other box.
    """
    rows = dict(zip(frame["path"].astype(str), range(len(frame)), strict=True))
    expected_rows = expected["image"].astype(str).map(rows).to_numpy()
    corners = ["x_min", "y_min", "x_max", "y_max"]
    matched, worst, worst_score = 0, 0.0, 0.0
    for row in range(len(frame)):
        want = expected[expected_rows == row]
        have = got[got["row"].to_numpy() == row]
        if not len(want) or not len(have):
            continue
        a, b = want[corners].to_numpy(float), have[corners].to_numpy(float)
        gaps = np.abs(a[:, None, :] - b[None, :, :]).max(axis=2)
        gaps[want["label"].to_numpy()[:, None] != have["label"].to_numpy()[None, :]] = np.inf
        free = np.ones(len(b), dtype=bool)
        for i in range(len(a)):  # most confident first, as both are ordered
            candidates = np.where(free, gaps[i], np.inf)
            j = int(np.argmin(candidates))
            if candidates[j] <= tolerance:
                free[j] = False
                matched += 1
                worst = max(worst, float(candidates[j]))
                worst_score = max(
                    worst_score,
                    abs(float(want["score"].iloc[i]) - float(have["score"].iloc[j])),
                )
    total = max(len(got), len(expected))
    return {
        "boxes": len(expected),
        "package_boxes": len(got),
        "matched": matched,
        "box_agreement": matched / total if total else 1.0,
        "max_abs_diff": worst,
        "max_score_diff": worst_score,
    }
