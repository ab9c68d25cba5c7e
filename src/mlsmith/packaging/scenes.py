"""Exporting a segmentation or detection network to ONNX, checked against the torch network.

The exported graph takes what the data kind's batches start from, uint8 images on the run's
canvas (N, C, H, W), normalises them as training did and runs the network: a segmentation
network gives logits (N, classes, H, W), a detector its detections (N, K, 6): x_min, y_min,
x_max, y_max, score, label. ``preprocessing.json`` (the canvas, normalisation and classes) goes
beside it. Parity is measured on the run's held-out images (the test split, else validation):
the largest absolute difference of the outputs, and for segmentation the share of pixels whose
class agrees; beyond ``export.tolerance`` (for detections, in pixels: times the canvas side)
nothing is written. A detector's graph takes one image at a time (see
:func:`_detector_to_onnx`).

Serving these packages (masks and boxes over HTTP) is not built yet.
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.data.base import PREPROCESSING_FILE
from mlsmith.errors import DataError
from mlsmith.files import write_json

if TYPE_CHECKING:
    from mlsmith.run import Run

EXPORT_FILE = "export.json"
CHECK_IMAGES = 32  # held-out images the ONNX model is compared on
BATCH = 8


def export_scene_run(run: Run, *, tolerance: float, output: Path) -> dict[str, Any]:
    """Write ``output`` (a folder: model.onnx, preprocessing.json, export.json); returns the
    export record."""
    import torch

    from mlsmith import families
    from mlsmith.packaging.formats import ONNX_FILE, to_onnx
    from mlsmith.packaging.graphs import inference_graph
    from mlsmith.packaging.writer import ExportError, package_workspace, replace_folder
    from mlsmith.runtime.engines import OnnxEngine

    data = families.data_kind(run.config.data.type).prepare(
        run.config, preprocessor=run.preprocessor
    )
    split = data.test if data.test is not None and len(data.test) else data.val
    if not len(split):
        raise DataError(f"{run.path}: the run's data has no held-out images to check on")
    images = split.inputs["image"][:CHECK_IMAGES]
    network = copy.deepcopy(run.model.network).cpu().eval()  # type: ignore[attr-defined]
    graph = inference_graph(network, run.preprocessor)
    with torch.inference_mode():
        reference = np.concatenate(
            [
                graph(torch.from_numpy(images[i : i + BATCH])).numpy()
                for i in range(0, len(images), BATCH)
            ]
        )
    with package_workspace(output) as work:
        folder = work / "package"
        folder.mkdir()
        started = time.perf_counter()
        kind = run.model.task.kind
        if kind == "detection":
            record = _detector_to_onnx(graph, images[:1], folder / ONNX_FILE)
        else:
            record = to_onnx(graph, {"image": images[:2]}, folder / ONNX_FILE)
        record["export_seconds"] = round(time.perf_counter() - started, 2)
        engine = OnnxEngine(folder / ONNX_FILE, providers=["CPUExecutionProvider"])
        step = record.get("batch") or BATCH
        found = np.concatenate(
            [engine.raw({"image": images[i : i + step]}) for i in range(0, len(images), step)]
        )
        record |= _parity(kind, reference, found)
        # Boxes are in pixels: their tolerance scales with the canvas.
        allowed = tolerance * (max(images.shape[-2:]) if kind == "detection" else 1)
        record |= {"check_images": len(images), "tolerance": allowed}
        if record["max_abs_diff"] > allowed:
            raise ExportError(
                f"the onnx export diverges from the torch model: max |difference| of the "
                f"{record['compared']} is {record['max_abs_diff']:.3g} (tolerance "
                f"{tolerance:g}); nothing was written. Raise export.tolerance only if that "
                "difference is acceptable"
            )
        record["bytes"] = (folder / ONNX_FILE).stat().st_size
        shutil.copy2(run.path / PREPROCESSING_FILE, folder / PREPROCESSING_FILE)
        export = {"task": run.model.task.kind, "formats": {"onnx": record}, "serving": None}
        write_json(folder / EXPORT_FILE, export)
        replace_folder(folder, output)
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
        record["pixel_agreement"] = float(same.mean())
    return record
