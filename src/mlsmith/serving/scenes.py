"""Serving a segmentation or detection package: image files in, masks or boxes out.

A scene package is served under its name beside the row models, on the same paths. Images
travel as their files' bytes (PNG, JPEG...), under the input name ``path`` as for an image
classifier: binary with the tensor extension, or base64 text in JSON.

- ``POST /v2/models/{name}/infer`` (Open Inference Protocol v2), input ``path`` BYTES [N].
  Segmentation answers ``mask`` BYTES [N] (a PNG of class ids per image in its own size:
  raw bytes when the output is asked for in binary, base64 text in JSON), ``height`` and
  ``width`` INT64 [N], and ``class_pixels`` INT64 [N, classes] (each class's pixel count).
  Detection answers one element per box: ``row`` INT64 [K] (the image it was found in),
  ``box`` FP64 [K, 4] (x_min, y_min, x_max, y_max in the image's own pixels), ``score`` FP64
  [K] and ``label`` BYTES [K].
- ``POST /v2/models/{name}/predict``: ``{"rows": [{"path": "<base64>"}, ...]}`` in;
  ``{"predictions": [...]}`` out, one object per image: ``{"mask": "<base64 PNG>", "height",
  "width", "class_pixels": {class: count}}``, or ``{"detections": [{"x_min", "y_min", "x_max",
  "y_max", "label", "score"}, ...]}``.

Each request runs in a worker thread (decoding and the network release the GIL). An image that
cannot be decoded is a 400 naming it. A scene package has no row signature to batch requests
by, no label feedback and no drift window, and it is not one of an A/B route's variants.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.errors import MlsmithError
from mlsmith.serving.protocol import BYTES, ProtocolError, Tensor

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.runtime.scene_package import ScenePackage
    from mlsmith.serving.protocol import InferRequest

INPUT = "path"  # the package's column, as an image classifier's


@dataclass(frozen=True)
class SceneEndpoint:
    """A served name that segments or detects."""

    name: str
    package: ScenePackage
    version: str
    source: str

    @property
    def feedback_refusal(self) -> str:
        return (
            f"'{self.name}' is a {self.package.kind} model: label feedback scores classifiers "
            "and regressors; score labelled images with `mlsmith evaluate`"
        )

    def metadata(self) -> dict[str, Any]:
        """The v2 model metadata: image files in, masks or boxes out."""
        if self.package.kind == "segmentation":
            outputs = [
                {"name": "mask", "datatype": BYTES, "shape": [-1]},
                {"name": "height", "datatype": "INT64", "shape": [-1]},
                {"name": "width", "datatype": "INT64", "shape": [-1]},
                {"name": "class_pixels", "datatype": "INT64", "shape": [-1, len(self.classes)]},
            ]
        else:
            outputs = [
                {"name": "row", "datatype": "INT64", "shape": [-1]},
                {"name": "box", "datatype": "FP64", "shape": [-1, 4]},
                {"name": "score", "datatype": "FP64", "shape": [-1]},
                {"name": "label", "datatype": BYTES, "shape": [-1]},
            ]
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": f"mlsmith_{self.package.family}",
            "inputs": [{"name": INPUT, "datatype": BYTES, "shape": [-1]}],
            "outputs": outputs,
            "parameters": {
                "task": self.package.kind,
                "family": self.package.family,
                "classes": self.classes,
                "canvas": list(self.package.canvas),
            },
        }

    @property
    def classes(self) -> list[str]:
        return self.package.classes

    async def infer(self, request: InferRequest) -> list[Tensor]:
        """A v2 request's images to the output tensors (see the module)."""
        frame = _frame(_tensor_images(request), f"input '{INPUT}'")
        if self.package.kind == "segmentation":
            masks = await self._run(lambda: self.package.masks(frame, "the request"))
            binary = request.wants_binary("mask")
            pngs = [_png(m) if binary else _png_text(m) for m in masks]
            n = len(masks)
            return [
                Tensor("mask", BYTES, [n], np.asarray(pngs, dtype=object)),
                Tensor("height", "INT64", [n], np.asarray([m.shape[0] for m in masks], np.int64)),
                Tensor("width", "INT64", [n], np.asarray([m.shape[1] for m in masks], np.int64)),
                Tensor(
                    "class_pixels",
                    "INT64",
                    [n, len(self.classes)],
                    self._pixels(masks).ravel(),
                ),
            ]
        found = await self._run(lambda: self.package.detections(frame, "the request"))
        rows = np.repeat(np.arange(len(found), dtype=np.int64), [len(d.scores) for d in found])
        boxes = np.concatenate([d.boxes for d in found]) if found else np.zeros((0, 4))
        scores = np.concatenate([d.scores for d in found]) if found else np.zeros(0)
        labels = np.asarray([label for d in found for label in d.labels], dtype=object)
        k = len(rows)
        return [
            Tensor("row", "INT64", [k], rows),
            Tensor("box", "FP64", [k, 4], boxes.astype(np.float64).ravel()),
            Tensor("score", "FP64", [k], scores.astype(np.float64)),
            Tensor("label", BYTES, [k], labels),
        ]

    async def predict_json(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"rows": [{"path": "<base64>"}, ...]}`` to ``{"predictions": [...]}``."""
        frame = _frame(_json_images(body.get("rows")), "rows")
        if self.package.kind == "segmentation":
            masks = await self._run(lambda: self.package.masks(frame, "the request"))
            counts = self._pixels(masks)
            return {
                "predictions": [
                    {
                        "mask": _png_text(mask),
                        "height": int(mask.shape[0]),
                        "width": int(mask.shape[1]),
                        "class_pixels": dict(zip(self.classes, map(int, count), strict=True)),
                    }
                    for mask, count in zip(masks, counts, strict=True)
                ]
            }
        found = await self._run(lambda: self.package.detections(frame, "the request"))
        columns = ("x_min", "y_min", "x_max", "y_max")
        return {
            "predictions": [
                {
                    "detections": [
                        {
                            **dict(zip(columns, map(float, box), strict=True)),
                            "label": label,
                            "score": float(score),
                        }
                        for box, score, label in zip(d.boxes, d.scores, d.labels, strict=True)
                    ]
                }
                for d in found
            ]
        }

    def _pixels(self, masks: list[np.ndarray]) -> np.ndarray:
        n = len(self.classes)
        counts = [np.bincount(m.ravel(), minlength=n)[:n] for m in masks]
        return np.asarray(counts, dtype=np.int64).reshape(len(masks), n)

    async def _run(self, work: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, work)
        except MlsmithError as exc:  # an image the package cannot decode: the client's error
            raise ProtocolError(str(exc)) from None


def _tensor_images(request: InferRequest) -> list[bytes]:
    """The request's ``path`` tensor as image files' bytes (400 for anything else)."""
    from mlsmith.errors import did_you_mean
    from mlsmith.serving.models import image_bytes

    for tensor in request.inputs:
        if tensor.name != INPUT:
            raise ProtocolError(
                f"unknown input '{tensor.name}'{did_you_mean(tensor.name, [INPUT])}; this model "
                f"reads one input, '{INPUT}': the image files' bytes"
            )
    tensor = request.inputs[0]  # the protocol's parser refuses a request without inputs
    where = f"input '{INPUT}'"
    if tensor.datatype != BYTES:
        raise ProtocolError(f"{where}: datatype {tensor.datatype}; send BYTES (the image files)")
    if len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise ProtocolError(f"{where}: shape must be [images]; found {tensor.shape}")
    return [image_bytes(v, where) for v in tensor.data]


def _json_images(rows: Any) -> list[bytes]:
    from mlsmith.serving.models import image_bytes

    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ProtocolError(
            f'\'rows\' must be a list of objects, one per image: {{"{INPUT}": "<base64>"}}'
        )
    out = []
    for i, row in enumerate(rows):
        if INPUT not in row:
            raise ProtocolError(f"rows[{i}] has no '{INPUT}' (the image file, base64-encoded)")
        value = row[INPUT]
        if not isinstance(value, str):
            raise ProtocolError(f"rows[{i}]: '{INPUT}' must be base64 text of the image file")
        out.append(image_bytes(value, f"rows[{i}]: '{INPUT}'"))
    return out


def _frame(images: list[bytes], where: str) -> pd.DataFrame:
    import pandas as pd

    if not images:
        raise ProtocolError(f"{where}: the request holds no images")
    return pd.DataFrame({INPUT: images})


def _png(mask: np.ndarray) -> bytes:
    from mlsmith.runtime.scene_package import mask_png

    return mask_png(mask)


def _png_text(mask: np.ndarray) -> str:
    return base64.b64encode(_png(mask)).decode("ascii")
