"""Writing a network in each export format, and running the written file for the parity check.

ONNX goes through ``torch.onnx.export`` (the dynamo exporter, dynamic batch axis, and for text a
dynamic token axis), with its opset recorded; TorchScript through ``torch.jit.trace``. Both take
the :mod:`~mlsmith.packaging.graphs` module, whose inputs are what a package's encoders produce.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlsmith.errors import MissingExtraError

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.torchscript.pt"


def to_onnx(graph: torch.nn.Module, inputs: dict[str, np.ndarray], file: Path) -> dict[str, Any]:
    """Export ``graph`` called on ``inputs`` (name -> batch) to ``file``; returns what was done."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise MissingExtraError("onnx", "export", "ONNX export") from None
    names = list(inputs)
    args = tuple(torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in names)
    batch = torch.export.Dim("batch")
    tokens = torch.export.Dim("tokens")
    shapes = {
        n: {0: batch, 1: tokens} if n in ("input_ids", "attention_mask") else {0: batch}
        for n in names
    }
    # The exporter reports its passes on stdout and through warnings; the result is checked
    # below against the torch model, which is what matters to the user.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            graph,
            args,
            str(file),
            input_names=names,
            output_names=["raw"],
            dynamic_shapes=shapes,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    opset = _opset(program, file)
    return {"file": file.name, "opset": opset, "inputs": names, "outputs": ["raw"]}


def _opset(program: Any, file: Path) -> int | None:
    import onnx

    model = onnx.load(str(file), load_external_data=False)
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def to_torchscript(
    graph: torch.nn.Module, inputs: dict[str, np.ndarray], file: Path
) -> dict[str, Any]:
    """Trace ``graph`` on ``inputs`` and save it to ``file``."""
    args = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in inputs.values())
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, args, check_trace=False)
    traced.save(str(file))
    return {"file": file.name, "inputs": list(inputs), "torch": torch.__version__.split("+")[0]}


class TorchScriptRunner:
    """A saved TorchScript file, run on named numpy inputs."""

    def __init__(self, file: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.module = torch.jit.load(str(file), map_location="cpu").eval()

    def raw(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        args = [torch.from_numpy(np.ascontiguousarray(v)) for v in inputs.values()]
        with torch.inference_mode():
            return self.module(*args).float().numpy()


class EagerRunner:
    """The torch module itself, on the CPU, on named numpy inputs (the reference)."""

    def __init__(self, graph: torch.nn.Module) -> None:
        self.graph = graph

    def raw(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        args = [torch.from_numpy(np.ascontiguousarray(v)) for v in inputs.values()]
        with torch.inference_mode():
            return self.graph(*args).float().numpy()
