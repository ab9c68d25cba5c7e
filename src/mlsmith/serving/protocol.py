"""The Open Inference Protocol (KServe v2) on the wire: requests in, responses out.

A request body is JSON, or, with the binary tensor data extension (what ``tritonclient`` sends
by default), a JSON header of ``Inference-Header-Content-Length`` bytes followed by the tensors'
raw bytes in input order. BYTES elements travel as a 4-byte little-endian length and the bytes.
Every malformed request is a :class:`ProtocolError` with the HTTP status a client should see
(400, 404, 413) and a message naming the input and what was expected.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

HEADER_LENGTH = "Inference-Header-Content-Length"
# Datatype -> numpy dtype for the fixed-size types; BYTES is an object array of bytes or str.
NUMPY_TYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
BYTES = "BYTES"
DATATYPES = (*NUMPY_TYPES, BYTES)
NUMERIC = tuple(t for t in NUMPY_TYPES if t != "BOOL")


class ProtocolError(Exception):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Tensor:
    """One named tensor: its flat elements and its shape."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray  # flat; dtype object (bytes or str) for BYTES
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1


@dataclass
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    parameters: dict[str, Any]
    outputs: list[RequestedOutput] | None
    binary_output: bool  # the request-level default for outputs not listed

    def wants_binary(self, name: str) -> bool:
        for output in self.outputs or []:
            if output.name == name:
                return output.binary
        return self.binary_output


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """Read an inference request body (JSON, or JSON + binary tensors)."""
    if header_length is None:
        header, binary = body, b""
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise ProtocolError(
                f"{HEADER_LENGTH} must be an integer; found {header_length!r}"
            ) from None
        if not 0 < size <= len(body):
            raise ProtocolError(
                f"{HEADER_LENGTH} is {size} but the body has {len(body)} bytes; it must give the "
                "length of the JSON header that starts the body"
            )
        header, binary = body[:size], body[size:]
    document = load_json(header)
    if not isinstance(document, dict):
        raise ProtocolError("the request body must be a JSON object with an 'inputs' list")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("the request needs a non-empty 'inputs' list")
    parameters = _object(document.get("parameters"), "request 'parameters'")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    if request_id is not None:
        check_text(request_id, "'id'")
    offset = 0
    tensors: list[Tensor] = []
    # Past FP16's or FP32's range a value becomes infinite, which the package refuses by name:
    # no overflow warning. One errstate for the request (it costs microseconds per entry).
    with np.errstate(over="ignore"):
        for i, item in enumerate(inputs):
            tensor, used = _input(item, i, binary, offset)
            offset += used
            tensors.append(tensor)
    if offset != len(binary):
        raise ProtocolError(
            f"the body holds {len(binary)} bytes of binary tensor data but the inputs' "
            f"binary_data_size add up to {offset}"
        )
    names = [t.name for t in tensors]
    if len(set(names)) < len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ProtocolError(f"input(s) given more than once: {', '.join(repeated)}")
    return InferRequest(
        id=request_id,
        inputs=tensors,
        parameters=parameters,
        outputs=_requested_outputs(document.get("outputs")),
        binary_output=bool(parameters.get("binary_data_output", False)),
    )


def load_json(body: bytes) -> Any:
    """The JSON value of a body; a ProtocolError (400) for anything that is not JSON.

    orjson (several times faster than the standard library on a request this size) refuses
    what would fail later: nesting past 1,024 levels, lone surrogates, NaN and numbers past
    float64's range. An integer past 64 bits becomes a float, refused by INT* inputs as too
    large.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"the request body is not valid JSON ({exc})") from None
    except RecursionError:
        raise ProtocolError("the request body is not valid JSON: nested too deeply") from None


def dump_json(value: Any) -> bytes:
    """``value`` as compact JSON; numpy scalars and arrays as numbers, NaN as null."""
    return orjson.dumps(value, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY)


def check_text(value: str, what: str) -> str:
    """``value`` if it is Unicode text; a ProtocolError otherwise.

    JSON's ``\\ud800`` escapes decode to lone surrogates, which no UTF-8 encoder accepts: left
    in, they fail later (in pandas' string arrays, in the JSON of the answer) as a 500.
    """
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ProtocolError(f"{what} must be valid Unicode text; found {value!r}") from None
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _input(item: Any, index: int, binary: bytes, offset: int) -> tuple[Tensor, int]:
    """One input tensor and the number of binary bytes it used."""
    if not isinstance(item, dict):
        raise ProtocolError(f"inputs[{index}] must be an object with name, shape, datatype, data")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"inputs[{index}] needs a 'name' (a string)")
    check_text(name, f"inputs[{index}]: 'name'")
    where = f"input '{name}'"
    datatype = item.get("datatype")
    if datatype not in DATATYPES:
        raise ProtocolError(
            f"{where}: datatype must be one of {', '.join(DATATYPES)}; found {datatype!r}"
        )
    shape = item.get("shape")
    # A loop over exact types, not all(isinstance...): this runs for every input of every request.
    if type(shape) is not list or not shape or any(type(d) is not int or d < 0 for d in shape):
        raise ProtocolError(
            f"{where}: 'shape' must be a list of non-negative integers; found {shape!r}"
        )
    count = math.prod(shape)
    parameters = _object(item.get("parameters"), f"{where}: 'parameters'")
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"{where}: binary_data_size must be a non-negative integer")
        if "data" in item:
            raise ProtocolError(f"{where}: give 'data' or binary_data_size, not both")
        chunk = binary[offset : offset + size]
        if len(chunk) != size:
            raise ProtocolError(
                f"{where}: binary_data_size is {size} but only {len(chunk)} bytes of binary data "
                "are left in the body"
            )
        data = _from_binary(chunk, datatype, count, where)
        return Tensor(name, datatype, shape, data, parameters), size
    if "data" not in item:
        raise ProtocolError(f"{where}: needs 'data' (or binary_data_size with binary data)")
    return Tensor(name, datatype, shape, _from_json(item["data"], datatype, count, where)), 0


def _flatten(data: Any) -> list[Any]:
    if type(data) is not list:
        return [data]
    for value in data:
        if type(value) is list:
            break
    else:
        return data  # already flat: the usual case
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


def _from_json(data: Any, datatype: str, count: int, where: str) -> np.ndarray:
    values = _flatten(data)
    if len(values) != count:
        raise ProtocolError(f"{where}: shape holds {count} elements but 'data' has {len(values)}")
    if datatype == BYTES:
        for value in values:
            if not isinstance(value, str):
                raise ProtocolError(f"{where}: BYTES data must be strings; found {value!r}")
            check_text(value, f"{where}: BYTES data")
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array
    if datatype == "BOOL":
        bad = next((v for v in values if not isinstance(v, bool)), None)
        if bad is not None:
            raise ProtocolError(f"{where}: BOOL data must be true or false; found {bad!r}")
        return np.asarray(values, dtype=np.bool_)
    # JSON has no NaN: a null is a missing value, which the package imputes as in training.
    for v in values:
        kind = type(v)
        if kind is not float and kind is not int and v is not None:
            raise ProtocolError(f"{where}: {datatype} data must be numbers; found {v!r}")
    if datatype.startswith(("INT", "UINT")):
        if any(v is None or (isinstance(v, float) and not v.is_integer()) for v in values):
            raise ProtocolError(f"{where}: {datatype} data must be whole numbers")
        try:
            return np.asarray(values, dtype=NUMPY_TYPES[datatype])
        except OverflowError:
            raise ProtocolError(f"{where}: a value does not fit in {datatype}") from None
    if None in values:
        values = [math.nan if v is None else v for v in values]
    try:
        floats = np.asarray(values, dtype=np.float64)
    except OverflowError:  # a JSON integer past float64's range (about 1.8e308)
        raise ProtocolError(f"{where}: a value does not fit in {datatype}") from None
    target = NUMPY_TYPES[datatype]
    return floats if target == floats.dtype else floats.astype(target)  # inf: see parse_request


def _from_binary(chunk: bytes, datatype: str, count: int, where: str) -> np.ndarray:
    if datatype == BYTES:
        return decode_bytes(chunk, count, where)
    dtype = NUMPY_TYPES[datatype]
    if len(chunk) != count * dtype.itemsize:
        raise ProtocolError(
            f"{where}: {count} {datatype} elements take {count * dtype.itemsize} bytes; "
            f"binary_data_size is {len(chunk)}"
        )
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype)


def decode_bytes(chunk: bytes, count: int, where: str) -> np.ndarray:
    """Length-prefixed BYTES elements (4-byte little-endian length, then the bytes)."""
    if count * 4 > len(chunk):
        # Checked before allocating: a shape of [10**12] must not ask numpy for terabytes.
        raise ProtocolError(
            f"{where}: {count} BYTES elements need at least {count * 4} bytes (a 4-byte length "
            f"each); binary_data_size is {len(chunk)}"
        )
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(chunk):
            raise ProtocolError(f"{where}: binary BYTES data ends after {i} of {count} elements")
        (length,) = struct.unpack_from("<I", chunk, offset)
        offset += 4
        if offset + length > len(chunk):
            raise ProtocolError(f"{where}: binary BYTES element {i} runs past the data")
        out[i] = chunk[offset : offset + length]
        offset += length
    if offset != len(chunk):
        raise ProtocolError(
            f"{where}: {len(chunk) - offset} bytes left over after {count} BYTES elements"
        )
    return out


def encode_bytes(values: np.ndarray) -> bytes:
    """The binary form of BYTES elements (see :func:`decode_bytes`)."""
    parts: list[bytes] = []
    for value in values.ravel():
        raw = value if isinstance(value, bytes) else str(value).encode()
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _requested_outputs(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ProtocolError("'outputs' must be a list of {'name': ...} objects")
    outputs = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError(f"outputs[{i}] needs a 'name' (a string)")
        check_text(item["name"], f"outputs[{i}]: 'name'")
        parameters = _object(item.get("parameters"), f"outputs[{i}]: 'parameters'")
        outputs.append(RequestedOutput(item["name"], bool(parameters.get("binary_data", False))))
    return outputs


def encode_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[Tensor],
    parameters: dict[str, Any],
    request: InferRequest,
) -> tuple[bytes, dict[str, str]]:
    """The response body and the headers it needs (binary outputs where the request asked)."""
    listed = [
        t
        for t in outputs
        if request.outputs is None or any(o.name == t.name for o in request.outputs)
    ]
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for tensor in listed:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        entry_parameters = dict(tensor.parameters)
        if request.wants_binary(tensor.name):
            raw = (
                encode_bytes(tensor.data)
                if tensor.datatype == BYTES
                else np.ascontiguousarray(tensor.data, dtype=NUMPY_TYPES[tensor.datatype]).tobytes()
            )
            entry_parameters["binary_data_size"] = len(raw)
            chunks.append(raw)
        else:
            entry["data"] = _json_values(tensor)
        if entry_parameters:
            entry["parameters"] = entry_parameters
        tensors.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        document["id"] = request_id
    if parameters:
        document["parameters"] = parameters
    document["outputs"] = tensors
    header = dump_json(document)
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(chunks), {
        HEADER_LENGTH: str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def _json_values(tensor: Tensor) -> list[Any]:
    if tensor.datatype == BYTES:
        return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in tensor.data]
    values = tensor.data.ravel().tolist()
    if tensor.datatype.startswith("FP"):
        # JSON has no NaN or infinity: a non-finite value travels as null.
        return [v if math.isfinite(v) else None for v in values]
    return values


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def check_requested_outputs(request: InferRequest, available: list[str]) -> None:
    """A 400 naming the outputs the model has when a request asks for one it does not."""
    for output in request.outputs or []:
        if output.name not in available:
            raise ProtocolError(
                f"unknown output '{output.name}'; this model's outputs: {', '.join(available)}"
            )
