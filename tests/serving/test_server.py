"""`mlsmith serve` as a client sees it: a real server process on 127.0.0.1, real HTTP."""

from __future__ import annotations

import json
import signal
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from tests.serving.conftest import ServedRun, Server

import mlsmith

NUMERIC = ["x1", "x2", "size"]


def v2_inputs(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as v2 JSON tensors: FP64 numbers (null where missing), BYTES categories."""
    inputs = []
    for column in rows.columns:
        values = rows[column]
        if column in NUMERIC:
            data = [None if pd.isna(v) else float(v) for v in values]
            inputs.append({"name": column, "shape": [len(rows)], "datatype": "FP64", "data": data})
        else:
            inputs.append(
                {"name": column, "shape": [len(rows)], "datatype": "BYTES", "data": list(values)}
            )
    return inputs


def infer(
    server: Server, body: Any, path: str = "/v2/models/clf/infer", **kw: Any
) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(server.url + path, content=content, timeout=30, **kw)


def expected(served_run: ServedRun, rows: pd.DataFrame) -> pd.DataFrame:
    return mlsmith.load_package(served_run.path).predict(rows)


def test_health_metadata_and_v2_json_inference_match_the_package(
    server: Server, served_run: ServedRun
) -> None:
    assert httpx.get(server.url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
    assert httpx.get(server.url + "/v2/models/clf/ready").json()["ready"] is True
    assert "binary_tensor_data" in httpx.get(server.url + "/v2").json()["extensions"]
    meta = httpx.get(server.url + "/v2/models/clf").json()
    assert [i["name"] for i in meta["inputs"]] == ["x1", "x2", "size", "color"]
    assert {i["name"]: i["datatype"] for i in meta["inputs"]}["color"] == "BYTES"
    assert meta["parameters"]["classes"] == ["no", "yes"]
    assert httpx.get(server.url + "/v2/models/clf/versions/1").status_code == 200

    rows = served_run.rows.iloc[:25]
    response = infer(server, {"id": "r1", "inputs": v2_inputs(rows)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "r1" and body["model_name"] == "clf" and body["model_version"] == "1"
    assert response.headers["x-mlsmith-variant"] == body["parameters"]["variant"] == "default"
    outputs = {o["name"]: o for o in body["outputs"]}
    want = expected(served_run, rows)
    assert outputs["prediction"]["data"] == list(want["prediction"])
    proba = np.asarray(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
    np.testing.assert_allclose(proba, want[["proba_no", "proba_yes"]].to_numpy(), atol=1e-6)
    # The same through a version-pinned path.
    pinned = infer(server, {"inputs": v2_inputs(rows)}, "/v2/models/clf/versions/1/infer")
    assert pinned.status_code == 200


def test_binary_tensor_extension_both_ways(server: Server, served_run: ServedRun) -> None:
    rows = served_run.rows.iloc[:7].fillna({"x2": 0.0})
    header: dict[str, Any] = {"inputs": [], "parameters": {"binary_data_output": True}}
    blobs = []
    for column in rows.columns:
        if column in NUMERIC:
            raw = rows[column].to_numpy(np.float32).tobytes()
            datatype = "FP32"
        else:
            raw = b"".join(struct.pack("<I", len(v)) + v.encode() for v in rows[column])
            datatype = "BYTES"
        header["inputs"].append(
            {
                "name": column,
                "shape": [7, 1],
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        blobs.append(raw)
    head = json.dumps(header).encode()
    response = infer(
        server,
        head + b"".join(blobs),
        headers={
            "Inference-Header-Content-Length": str(len(head)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert response.status_code == 200, response.text
    size = int(response.headers["Inference-Header-Content-Length"])
    meta = json.loads(response.content[:size])
    outputs = {o["name"]: o for o in meta["outputs"]}
    data = response.content[size:]
    labels_size = outputs["prediction"]["parameters"]["binary_data_size"]
    proba = np.frombuffer(data[labels_size:], dtype="<f8").reshape(7, 2)
    want = expected(served_run, rows)
    np.testing.assert_allclose(proba, want[["proba_no", "proba_yes"]].to_numpy(), atol=1e-5)
    labels, offset = [], 0
    while offset < labels_size:
        (n,) = struct.unpack_from("<I", data, offset)
        labels.append(data[offset + 4 : offset + 4 + n].decode())
        offset += 4 + n
    assert labels == list(want["prediction"])


def test_tritonclient_binary_and_json_get_the_packages_predictions(
    server: Server, served_run: ServedRun
) -> None:
    from tritonclient import http

    client = http.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_model_ready("clf")
    rows = served_run.rows.iloc[:12].fillna({"x2": 0.0})

    def inputs(binary: bool) -> list[Any]:
        out = []
        for column in rows.columns:
            numeric = column in NUMERIC
            tensor = http.InferInput(column, [12], "FP32" if numeric else "BYTES")
            values = rows[column].to_numpy(np.float32 if numeric else object)
            tensor.set_data_from_numpy(values, binary_data=binary)
            out.append(tensor)
        return out

    want = expected(served_run, rows)
    binary = client.infer("clf", inputs(True))  # tritonclient's default: binary in and out
    assert [v.decode() for v in binary.as_numpy("prediction")] == list(want["prediction"])
    as_json = client.infer(
        "clf",
        inputs(False),
        outputs=[
            http.InferRequestedOutput("prediction", binary_data=False),
            http.InferRequestedOutput("probabilities", binary_data=False),
        ],
    )
    assert list(as_json.as_numpy("prediction")) == list(want["prediction"])
    np.testing.assert_allclose(
        as_json.as_numpy("probabilities"), want[["proba_no", "proba_yes"]].to_numpy(), atol=1e-5
    )


def test_plain_json_predict(server: Server, served_run: ServedRun) -> None:
    rows = served_run.rows.iloc[:3]
    records = json.loads(rows.to_json(orient="records"))
    response = httpx.post(server.url + "/v2/models/clf/predict", json={"rows": records})
    assert response.status_code == 200, response.text
    body = response.json()
    want = expected(served_run, rows)
    assert [p["prediction"] for p in body["predictions"]] == list(want["prediction"])
    assert body["predictions"][0]["probabilities"]["yes"] == pytest.approx(
        want["proba_yes"][0], abs=1e-6
    )


BAD_REQUESTS = [
    ("not json", b"{nope", "not valid JSON"),
    ("no inputs", {"inputs": []}, "non-empty 'inputs'"),
    ("missing input", {"drop": "color"}, "missing input(s): color"),
    (
        "extra input",
        {"extra": {"name": "colour", "shape": [1], "datatype": "BYTES", "data": ["x"]}},
        "unknown input 'colour'",
    ),
    (
        "wrong datatype",
        {"replace": {"name": "x1", "shape": [1], "datatype": "BOOL", "data": [True]}},
        "input 'x1': datatype BOOL",
    ),
    (
        "text for a number",
        {"replace": {"name": "x1", "shape": [1], "datatype": "BYTES", "data": ["abc"]}},
        "expected a number",
    ),
    (
        "wrong shape",
        {"replace": {"name": "x1", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0]}},
        "shape must be [rows]",
    ),
    (
        "rows disagree",
        {"replace": {"name": "x1", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]}},
        "1 rows, but the other inputs have 2",
    ),
    (
        "data count",
        {"replace": {"name": "x1", "shape": [1], "datatype": "FP64", "data": [1.0, 2.0]}},
        "shape holds 1 elements but 'data' has 2",
    ),
    (
        "string in numbers",
        {"replace": {"name": "x1", "shape": [1], "datatype": "FP64", "data": ["1"]}},
        "must be numbers",
    ),
    ("unknown output", {"outputs": [{"name": "logits"}]}, "unknown output 'logits'"),
]


@pytest.mark.parametrize(
    ("case", "change", "message"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_requests_get_400_naming_the_problem(
    server: Server, served_run: ServedRun, case: str, change: Any, message: str
) -> None:
    if isinstance(change, bytes):
        body: Any = change
    elif "inputs" in change:
        body = change
    else:
        inputs = v2_inputs(served_run.rows.iloc[:1])
        if "drop" in change:
            inputs = [i for i in inputs if i["name"] != change["drop"]]
        if "extra" in change:
            inputs.append(change["extra"])
        if "replace" in change:
            inputs = [
                change["replace"] if i["name"] == change["replace"]["name"] else i for i in inputs
            ]
        body = {"inputs": inputs, **({"outputs": change["outputs"]} if "outputs" in change else {})}
    response = infer(server, body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_unknown_model_version_and_path_are_404_and_huge_bodies_413(server: Server) -> None:
    response = infer(server, {"inputs": []}, "/v2/models/clff/infer")
    assert response.status_code == 404 and "did you mean 'clf'" in response.json()["error"]
    response = infer(server, {"inputs": []}, "/v2/models/clf/versions/7/infer")
    assert response.status_code == 404 and "no version '7'" in response.json()["error"]
    assert httpx.get(server.url + "/v2/nothing").status_code == 404
    huge = b"[" + b"1," * (9 * 2**20) + b"1]"  # 18 MiB, over the 16 MiB default
    response = infer(server, huge)
    assert response.status_code == 413 and "over the limit" in response.json()["error"]
    bad_header = infer(server, b"{}", headers={"Inference-Header-Content-Length": "99"})
    assert bad_header.status_code == 400


def test_concurrent_requests_are_batched_and_counted(server: Server, served_run: ServedRun) -> None:
    rows = served_run.rows.iloc[:1]
    body = json.dumps({"inputs": v2_inputs(rows)})
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(32) as pool:
        statuses = list(
            pool.map(
                lambda _: (
                    client.post(server.url + "/v2/models/clf/infer", content=body).status_code
                ),
                range(400),
            )
        )
    assert set(statuses) == {200}
    metrics = httpx.get(server.url + "/metrics").text
    assert (
        'mlsmith_requests_total{endpoint="infer",model="clf",status="200",variant="default"}'
        in metrics
    )
    counts = _histogram(metrics, "mlsmith_batch_requests", "clf")
    # Some inference calls answered several requests at once.
    assert counts["1.0"] < counts["+Inf"], counts
    assert "mlsmith_request_latency_seconds_bucket" in metrics
    assert 'mlsmith_predictions_total{label="yes",model="clf",variant="default"}' in metrics


def _histogram(text: str, name: str, model: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{") and f'model="{model}"' in line:
            le = line.split('le="')[1].split('"')[0]
            out[le] = float(line.rsplit(" ", 1)[1])
    return out


def test_sigterm_drains_in_flight_requests_then_exits_0(
    server_factory: Any, served_run: ServedRun
) -> None:
    server = server_factory([str(served_run.path)])
    body = json.dumps({"inputs": v2_inputs(served_run.rows.iloc[:200])})
    results: list[int] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                try:
                    results.append(
                        http.post(server.url + "/v2/models/clf/infer", content=body).status_code
                    )
                except httpx.TransportError:
                    return  # the port closed: the drain is under way

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    code = server.stop(signal.SIGTERM)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert code == 0, "".join(server.stderr_lines)
    assert results and set(results) == {200}, results[-10:]


def test_bad_model_reference_is_a_usage_error(server_factory: Any, tmp_path: Any) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "mlsmith", "serve", str(tmp_path / "nowhere"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "not an mlsmith package" in result.stderr and "Traceback" not in result.stderr


def test_a_missing_serve_extra_names_the_install(served_run: ServedRun) -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "from mlsmith.cli import main\n"
        f"main(['serve', {str(served_run.path)!r}, '--port', '0'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "pip install 'mlsmith[serve]'" in result.stderr and "Traceback" not in result.stderr
