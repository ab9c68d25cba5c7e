"""KServe's own REST client (``kserve.InferenceRESTClient``, v2 protocol) against ``mlsmith serve``:
it gets the same predictions as ``mlsmith predict`` on the same rows.

kserve (0.21) pins ``pandas<3``, so pip cannot install it beside mlsmith's pandas: it is installed
with ``--no-deps``, next to the few packages ``import kserve`` needs, all of which resolve beside
our pins (grpcio, orjson, psutil<6, cloudevents<2, grpc-interceptor, timing-asgi, watchfiles,
tabulate, kubernetes)::

    pip install --no-deps "kserve==0.21.0"

Its client only sends and reads v2 JSON and binary tensors (numpy and pandas for the data), so the
pin does not matter to it. Without kserve the module is skipped locally; under CI (``CI`` set) a
missing kserve fails instead, so the check cannot quietly stop running.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tests.serving.conftest import ServedRun, Server

try:
    import kserve
except ImportError as exc:  # not installable with pip's resolver: see the docstring
    MISSING = f"kserve's client is not installed ({exc}); pip install --no-deps kserve==0.21.0"
else:
    MISSING = ""
if MISSING and os.environ.get("CI"):
    pytest.fail(f"{MISSING}: CI must install it", pytrace=False)
if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

NUMERIC = ["x1", "x2", "size"]
ROWS = 40  # includes rows with x2 missing, which both paths must impute alike


def kserve_request(rows: pd.DataFrame, binary: bool) -> Any:
    """The rows as a kserve InferRequest: FP64 numbers (NaN where missing), BYTES categories."""
    inputs = []
    for column in rows.columns:
        numeric = column in NUMERIC
        tensor = kserve.InferInput(column, [len(rows)], "FP64" if numeric else "BYTES")
        values = rows[column].to_numpy(np.float64 if numeric else object)
        tensor.set_data_from_numpy(values, binary_data=binary)
        inputs.append(tensor)
    # Binary in, binary out: the request-level default of the binary tensor extension.
    parameters = {"binary_data_output": True} if binary else None
    return kserve.InferRequest("clf", inputs, request_id="kserve-1", parameters=parameters)


async def ask(server: Server, rows: pd.DataFrame) -> tuple[list[bool], dict[bool, Any]]:
    """Liveness, readiness and model readiness, then one inference each way (binary or not),
    through kserve's client."""
    client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=30, retries=0))
    try:
        health = [
            await client.is_server_live(server.url),
            await client.is_server_ready(server.url),
            await client.is_model_ready(server.url, "clf"),
        ]
        responses = {}
        for binary in (True, False):
            request = kserve_request(rows, binary)
            responses[binary] = await client.infer(server.url, request, model_name="clf")
        return health, responses
    finally:
        await client.close()


def test_kserve_rest_client_gets_the_predictions_of_mlsmith_predict(
    server: Server, served_run: ServedRun, cli: Any, tmp_path: Path
) -> None:
    rows = served_run.rows.iloc[:ROWS].reset_index(drop=True)
    assert rows["x2"].isna().any()  # the gap is part of what is compared
    rows.to_csv(tmp_path / "rows.csv", index=False)
    result = cli("predict", served_run.path, "-i", tmp_path / "rows.csv", "-o", tmp_path / "p.csv")
    assert result.code == 0, result.stderr
    want = pd.read_csv(tmp_path / "p.csv")

    health, responses = asyncio.run(ask(server, rows))
    assert health == [True, True, True]
    for binary, response in responses.items():
        assert response.id == "kserve-1" and response.model_name == "clf"
        labels = response.get_output_by_name("prediction").as_numpy()
        got = [v.decode() if isinstance(v, bytes) else str(v) for v in labels]
        assert got == list(want["prediction"]), f"binary={binary}"
        proba = response.get_output_by_name("probabilities").as_numpy()
        assert proba.shape == (ROWS, 2)
        np.testing.assert_allclose(
            proba, want[["proba_no", "proba_yes"]].to_numpy(), atol=1e-6, err_msg=f"{binary=}"
        )
