"""Property-based requests against the server's own OpenAPI document: no answer is a 5xx.

schemathesis reads ``/openapi.json`` from a real ``mlsmith serve`` process and, for every
operation the document lists, generates requests that fit the document (positive) and requests
that break it (negative: wrong types, missing fields, values out of range), sends them and checks
``not_a_server_error``. Client mistakes must come back as 4xx; a 5xx means a bug. The served name
and version are pinned to ``clf``/``1`` so the requests reach the handlers instead of ending as
404s for names the fuzzer invents (unknown names have their own tests).

Each operation is driven through ``APIOperation.as_strategy`` and Hypothesis directly, not
through ``schemathesis.pytest.from_fixture``: with pytest 9 that integration fails before the
first request (schemathesis 4.32 sets ``Function._nodeid``, which pytest 9 no longer has).

The document cannot know a model's input names, so its requests mostly stop at the first check;
structure-aware Hypothesis requests (valid ones for the served model with one thing broken: JSON,
binary tensors, plain rows) go further. What they found is pinned at the end as plain cases.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from tests.serving.conftest import Server

MODEL, VERSION = "clf", "1"
HEADER = "Inference-Header-Content-Length"
# Requests per schemathesis case (17 of them; 5x that per structure-aware test): about 10 s of
# requests on 2 cores, the rest of the module's 30 s being the trained run and the server.
# MLSMITH_FUZZ_EXAMPLES=500 digs deeper (a few minutes).
MAX_EXAMPLES = int(os.environ.get("MLSMITH_FUZZ_EXAMPLES", "30"))

OPERATIONS = [
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2"),
    ("GET", "/v2/models/{name}"),
    ("GET", "/v2/models/{name}/ready"),
    ("GET", "/v2/models/{name}/versions/{version}"),
    ("GET", "/v2/models/{name}/versions/{version}/ready"),
    ("POST", "/v2/models/{name}/infer"),
    ("POST", "/v2/models/{name}/versions/{version}/infer"),
    ("POST", "/v2/models/{name}/predict"),
    ("POST", "/v2/models/{name}/feedback"),
    ("GET", "/v2/models/{name}/ab"),
    ("GET", "/metrics"),
]


@pytest.fixture(scope="module")
def api_schema(server: Server) -> schemathesis.BaseSchema:
    """The running server's OpenAPI document, with requests aimed at that server."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    schema.config.update(base_url=server.url)
    return schema


def test_the_document_lists_every_endpoint(api_schema: schemathesis.BaseSchema) -> None:
    """The fuzzer only reaches what the document lists: every endpoint must be in it."""
    listed = {(method, path) for path in api_schema for method in api_schema[path]}
    assert set(OPERATIONS) <= {(m.upper(), p) for m, p in listed}


# Positive requests for every operation; negative ones where there is something to break: the
# bodies (the GETs' only parameters are the pinned path ones, so a negative GET is impossible).
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    if method == "POST" or mode is schemathesis.GenerationMode.POSITIVE
]


@pytest.mark.parametrize(
    ("method", "path", "mode"), CASES, ids=[f"{m} {p} {mode}" for m, p, mode in CASES]
)
def test_no_request_gets_a_server_error(
    api_schema: schemathesis.BaseSchema,
    method: str,
    path: str,
    mode: schemathesis.GenerationMode,
) -> None:
    operation = api_schema[path][method]
    pinned = {k: v for k, v in {"name": MODEL, "version": VERSION}.items() if f"{{{k}}}" in path}
    strategy = operation.as_strategy(mode, path_parameters=pinned or None)

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,  # a request's time is the server's, not the generator's
        suppress_health_check=list(HealthCheck),
        derandomize=True,  # the same requests every run: a failure here reproduces
        database=None,
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=[not_a_server_error])

    check()


def test_a_version_nobody_serves_is_a_404_not_a_5xx(server: Server) -> None:
    """The pinned version above never varies; an unknown one must be a client error too."""
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/versions/7/infer", content=b"{}")
    assert response.status_code == 404, response.text


# --- structure-aware requests ------------------------------------------------------------------
# The document's infer body is generic (any input names), so schemathesis' requests stop at the
# first check. These start from a valid request for the served model's real inputs and break
# one thing at a time, so the fuzzing reaches the decoding of every datatype, the frame and the
# package.

INPUTS = {"x1": "FP64", "x2": "FP64", "size": "FP64", "color": "BYTES"}  # served_run's columns
DATATYPES = ["BOOL", "UINT8", "INT32", "INT64", "UINT64", "FP16", "FP32", "FP64", "BYTES"]
HOSTILE_TEXT = ["\ud800", "a\udfffb", "", " ", "NaN", "1e999", "red\x00", "\u2603"]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**1100), max_value=2**1100)  # past float64 and int64 both ways
    | st.floats()  # NaN and infinities too: Python clients send them as bare literals
    | st.text(max_size=8)
    | st.sampled_from(HOSTILE_TEXT)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)
MUTATIONS = {
    "name": st.sampled_from([*INPUTS, *HOSTILE_TEXT]) | json_values,
    "shape": st.lists(st.integers(-1, 3) | st.integers(10**9, 10**20) | json_scalars, max_size=3)
    | json_values,
    "datatype": st.sampled_from([*DATATYPES, "fp64", "STRING"]) | json_values,
    "data": st.lists(json_scalars, max_size=4) | json_values,
    "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "x"]), json_values),
}
# Header-safe ids: what an id may hold that a header cannot is in HOSTILE below.
ids = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)


def valid_tensor(name: str, rows: int) -> dict[str, Any]:
    value: Any = "red" if INPUTS[name] == "BYTES" else 0.5
    return {"name": name, "shape": [rows], "datatype": INPUTS[name], "data": [value] * rows}


@st.composite
def infer_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid v2 request for 1-3 rows with, per input, maybe one field replaced or the input
    dropped; maybe an id, request parameters and requested outputs."""
    rows = draw(st.integers(1, 3))
    inputs = []
    for name in INPUTS:
        if draw(st.integers(0, 9)) == 0:
            continue  # a missing input
        tensor = valid_tensor(name, rows)
        if draw(st.booleans()):
            field = draw(st.sampled_from(sorted(MUTATIONS)))
            tensor[field] = draw(MUTATIONS[field])
        inputs.append(tensor)
    body: dict[str, Any] = {"inputs": draw(st.permutations(inputs))}
    if draw(st.booleans()):
        body["id"] = draw(ids)
    if draw(st.booleans()):
        body["parameters"] = draw(
            st.dictionaries(st.sampled_from(["binary_data_output", "x"]), json_values, max_size=2)
        )
    if draw(st.booleans()):
        output = st.fixed_dictionaries(
            {"name": st.sampled_from(["prediction", "probabilities", "nope"]) | json_values},
            optional={"parameters": st.dictionaries(st.just("binary_data"), json_values)},
        )
        body["outputs"] = draw(st.lists(output, max_size=3) | json_values)
    return body


@st.composite
def binary_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    """The binary tensor extension: a JSON header declaring sizes, then random bytes; the
    header length is right or off by a little."""
    rows = draw(st.integers(1, 3))
    inputs, blobs = [], []
    for name in INPUTS:
        datatype = draw(st.sampled_from(DATATYPES))
        shape = draw(st.sampled_from([[rows], [rows, 1], [10**12], [0]]))
        blob = draw(st.binary(max_size=32))
        size = draw(st.sampled_from([len(blob), len(blob) + 4, 0]))
        parameters = {"binary_data_size": size}
        inputs.append(
            {"name": name, "shape": shape, "datatype": datatype, "parameters": parameters}
        )
        blobs.append(blob)
    header = json.dumps({"inputs": inputs}).encode()
    length = len(header) + draw(st.sampled_from([0, 0, -1, 1, -len(header)]))
    return header + b"".join(blobs), str(length)


@st.composite
def predict_bodies(draw: st.DrawFn) -> Any:
    """``{"rows": [...]}`` with the real columns holding any JSON value, a column sometimes
    missing or unknown; sometimes not that shape at all."""
    rows = []
    for _ in range(draw(st.integers(1, 3))):
        row: dict[str, Any] = {}
        for name in INPUTS:
            if draw(st.integers(0, 9)):
                row[name] = draw(st.sampled_from(["red", 0.5, None]) | json_scalars)
        if not draw(st.integers(0, 9)):
            row[draw(st.sampled_from(HOSTILE_TEXT))] = 1
        rows.append(row)
    body = {"rows": rows, **({"id": draw(ids)} if draw(st.booleans()) else {})}
    return draw(st.just(body) | json_values)


FUZZ = settings(
    max_examples=5 * MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)


def answered(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text


def test_broken_v2_json_requests_are_client_errors(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:

        @given(body=infer_bodies())
        @FUZZ
        def check(body: dict[str, Any]) -> None:
            answered(client.post(f"/v2/models/{MODEL}/infer", content=json.dumps(body)))

        check()


def test_broken_binary_requests_are_client_errors(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:

        @given(request=binary_bodies())
        @FUZZ
        def check(request: tuple[bytes, str]) -> None:
            content, length = request
            headers = {HEADER: length, "Content-Type": "application/octet-stream"}
            answered(client.post(f"/v2/models/{MODEL}/infer", content=content, headers=headers))

        check()


def test_broken_rows_are_client_errors(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:

        @given(body=predict_bodies())
        @FUZZ
        def check(body: Any) -> None:
            answered(client.post(f"/v2/models/{MODEL}/predict", content=json.dumps(body)))

        check()


# --- what the fuzzing found, pinned --------------------------------------------------------------
DEEP = b"[" * 100_000 + b"]" * 100_000  # Python's JSON parser recurses once per level
ONE_ROW = {"inputs": [valid_tensor(name, 1) for name in INPUTS]}
ROW = {"x1": 0.5, "x2": 0.5, "size": 0.5, "color": "red"}


def tensor(column: str, **fields: Any) -> dict[str, Any]:
    """``column``'s valid one-row tensor with ``fields`` replaced."""
    return {**valid_tensor(column, 1), **fields}


def infer_with(*replaced: dict[str, Any], **fields: Any) -> bytes:
    """A valid one-row request with these tensors in place of their inputs', plus ``fields``."""
    names = {t["name"] for t in replaced}
    inputs = [t for t in ONE_ROW["inputs"] if t["name"] not in names] + list(replaced)
    return json.dumps({"inputs": inputs, **fields}).encode()


def rows_with(**fields: Any) -> bytes:
    return json.dumps({"rows": [ROW], **fields}).encode()


def case(endpoint: str, what: str, body: bytes) -> Any:
    return pytest.param(endpoint, body, id=f"{endpoint}: {what}")


HOSTILE = [
    case("infer", "int past float64", infer_with(tensor("x1", data=[10**400]))),
    case(
        "infer",
        "FP32 int past float64",
        infer_with(tensor("x1", datatype="FP32", data=[-(10**400)])),
    ),
    case("infer", "deep JSON", DEEP),
    case("infer", "lone surrogate in BYTES", infer_with(tensor("color", data=["\ud800"]))),
    case("infer", "lone surrogate as a name", infer_with(tensor("x1", name="\ud800"))),
    case("infer", "lone surrogate as an output", infer_with(outputs=[{"name": "\ud800"}])),
    case("infer", "lone surrogate as the id", infer_with(id="\ud800")),
    case("predict", "int past float64", json.dumps({"rows": [{**ROW, "x1": 10**400}]}).encode()),
    case(
        "predict",
        "lone surrogate value",
        json.dumps({"rows": [{**ROW, "color": "\ud800"}]}).encode(),
    ),
    case("predict", "lone surrogate column", json.dumps({"rows": [{**ROW, "\ud800": 1}]}).encode()),
    case("predict", "deep JSON", DEEP),
    case("feedback", "deep JSON", DEEP),
    case(
        "feedback",
        "lone surrogate id",
        json.dumps({"request_ids": ["\ud800"], "labels": ["yes"]}).encode(),
    ),
    case("infer", "id past Latin-1", infer_with(id="\u2603")),
    case("infer", "id with a newline", infer_with(id="a\nb")),
    case("infer", "id with NUL", infer_with(id="a\x00b")),
    case("predict", "id past Latin-1", rows_with(id="\u2603")),
]


@pytest.mark.parametrize(("endpoint", "body"), HOSTILE)
def test_hostile_request_is_answered_without_a_server_error(
    server: Server, endpoint: str, body: bytes
) -> None:
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/{endpoint}", content=body, timeout=30)
    assert response.status_code < 500, response.text
    if response.status_code == 200:  # an id the header cannot carry is still in the body
        assert response.json().get("id") is not None


def test_binary_bytes_shape_is_checked_before_allocating(server: Server) -> None:
    """A shape of 10**12 BYTES elements with 4 bytes of data: a 400, not a 7 TiB allocation."""
    head = json.dumps(
        {
            "inputs": [
                *(valid_tensor(name, 1) for name in ("x1", "x2", "size")),
                {
                    "name": "color",
                    "shape": [10**12],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 4},
                },
            ]
        }
    ).encode()
    response = httpx.post(
        f"{server.url}/v2/models/{MODEL}/infer",
        content=head + b"\0\0\0\0",
        headers={HEADER: str(len(head)), "Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert "at least" in response.json()["error"]
