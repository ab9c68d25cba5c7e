"""A/B routes, sticky keys, a shadow, label feedback and hot swaps, against real servers."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import yaml
from tests.serving.conftest import ServedRun, Server
from tests.serving.test_server import v2_inputs

import mlsmith


def write_routes(path: Path, champion: Path, challenger: Path, **route: Any) -> Path:
    config = {
        "routes": {
            "clf": {
                "variants": [
                    {"name": "champion", "model": str(champion), "weight": 90},
                    {"name": "challenger", "model": str(challenger), "weight": 10},
                ],
                **route,
            }
        }
    }
    path.write_text(yaml.safe_dump(config))
    return path


def post_many(
    server: Server, bodies: list[str], headers: list[dict[str, str]] | None = None
) -> list[httpx.Response]:
    headers = headers or [{}] * len(bodies)
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(16) as pool:
        return list(
            pool.map(
                lambda i: client.post(
                    server.url + "/v2/models/clf/infer", content=bodies[i], headers=headers[i]
                ),
                range(len(bodies)),
            )
        )


def test_weighted_split_sticky_keys_shadow_and_feedback(
    server_factory: Any, served_run: ServedRun, second_run: ServedRun, tmp_path: Path
) -> None:
    config = write_routes(
        tmp_path / "serve.yaml",
        served_run.path,
        second_run.path,
        shadow={"name": "shadow", "model": str(second_run.path)},
        sticky={"header": "X-User"},
    )
    server = server_factory(["--config", str(config)])
    rows = served_run.rows.iloc[:1]
    body = json.dumps({"inputs": v2_inputs(rows)})

    # Keyless: drawn by weight. 2,000 requests, 90/10 within 4 standard deviations.
    responses = post_many(server, [body] * 2000)
    assert {r.status_code for r in responses} == {200}
    counts = Counter(r.headers["x-mlsmith-variant"] for r in responses)
    assert set(counts) == {"champion", "challenger"}  # never the shadow
    sigma = math.sqrt(2000 * 0.9 * 0.1)
    assert abs(counts["challenger"] - 200) < 4 * sigma, counts
    for response in responses[:50]:
        assert response.json()["parameters"]["variant"] == response.headers["x-mlsmith-variant"]

    # Sticky: one key, one variant, every time.
    keys = [f"user-{i}" for i in range(60)]
    keyed = post_many(server, [body] * 180, [{"X-User": keys[i % 60]} for i in range(180)])
    by_key: dict[str, set[str]] = {}
    for i, response in enumerate(keyed):
        by_key.setdefault(keys[i % 60], set()).add(response.headers["x-mlsmith-variant"])
    assert all(len(v) == 1 for v in by_key.values()), by_key
    assert {next(iter(v)) for v in by_key.values()} == {"champion", "challenger"}

    # The shadow never answers and never changes an answer: the champion's are the package's.
    want = mlsmith.load_package(served_run.path).predict(rows)
    champion = next(r for r in responses if r.headers["x-mlsmith-variant"] == "champion")
    outputs = {o["name"]: o for o in champion.json()["outputs"]}
    assert outputs["prediction"]["data"] == list(want["prediction"])

    # Feedback: labels for some answered requests; live metrics and shadow agreement at /ab.
    labelled = [r.json()["id"] for r in responses[:300]]
    label = str(served_run.labels.iloc[0])
    sent = httpx.post(
        server.url + "/v2/models/clf/feedback",
        json={"request_ids": [*labelled, "nobody"], "labels": [label] * 301},
    )
    assert sent.status_code == 200, sent.text
    assert sent.json()["unknown"] == ["nobody"]
    deadline = time.monotonic() + 20
    while True:  # the shadow answers after each response: give the last ones a moment
        report = httpx.get(server.url + "/v2/models/clf/ab", timeout=60).json()
        if (report.get("shadow") or {}).get("n_requests", 0) >= 2000 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert report["weights"] == {"champion": 0.9, "challenger": 0.1}
    champion_report = report["variants"]["champion"]
    assert champion_report["n_labelled"] > 200
    accuracy = champion_report["metrics"]["accuracy"]
    assert accuracy["ci95"][0] <= accuracy["value"] <= accuracy["ci95"][1]
    assert report["shadow"]["name"] == "shadow" and report["shadow"]["n_requests"] >= 2000
    assert 0.0 <= report["shadow"]["agreement"]["label_agreement"] <= 1.0
    # Each shadow call is counted in the metrics under its own variant, never in the answers.
    metrics = httpx.get(server.url + "/metrics").text
    assert 'variant="shadow"' not in "".join(
        line for line in metrics.splitlines() if line.startswith("mlsmith_requests_total")
    )


def test_sticky_key_from_an_input_and_bad_feedback(
    server_factory: Any, served_run: ServedRun, second_run: ServedRun, tmp_path: Path
) -> None:
    config = write_routes(
        tmp_path / "serve.yaml", served_run.path, second_run.path, sticky={"input": "customer"}
    )
    server = server_factory(["--config", str(config)])
    seen: dict[str, set[str]] = {}
    for i in range(40):
        inputs = v2_inputs(served_run.rows.iloc[:1])
        customer = f"c{i % 8}"
        inputs.append({"name": "customer", "shape": [1], "datatype": "BYTES", "data": [customer]})
        response = httpx.post(server.url + "/v2/models/clf/infer", json={"inputs": inputs})
        assert response.status_code == 200, response.text
        seen.setdefault(customer, set()).add(response.headers["x-mlsmith-variant"])
    assert all(len(v) == 1 for v in seen.values())
    bad = httpx.post(
        server.url + "/v2/models/clf/feedback", json={"request_ids": ["a"], "labels": []}
    )
    assert bad.status_code == 400 and "one label per request id" in bad.json()["error"]
    bad = httpx.post(
        server.url + "/v2/models/clf/feedback", json={"request_ids": "a", "labels": []}
    )
    assert bad.status_code == 400


def test_hot_swap_under_load_fails_no_request(
    server_factory: Any, served_run: ServedRun, second_run: ServedRun
) -> None:
    uri = f"sqlite:///{served_run.path.parents[1] / 'mlflow.db'}"
    first = mlsmith.register(served_run.path, "swap", alias="live", tracking_uri=uri)
    second = mlsmith.register(second_run.path, "swap", tracking_uri=uri)
    server = server_factory(["models:/swap@live", "--tracking-uri", uri, "--watch", "0.3"])
    body = json.dumps({"inputs": v2_inputs(served_run.rows.iloc[:3])})
    versions: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(server.url + "/v2/models/swap/infer", content=body)
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    versions.append(response.json()["model_version"])

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(
        "swap", "live", second.version
    )
    deadline = time.monotonic() + 30
    while second.version not in versions[-20:] and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert not failures, failures[:3]
    assert versions[0] == first.version and versions[-1] == second.version, Counter(versions)
    meta = httpx.get(server.url + "/v2/models/swap").json()
    assert meta["versions"] == [second.version]
    metrics = httpx.get(server.url + "/metrics").text
    assert (
        f'mlsmith_model_version{{model="swap",variant="default",version="{second.version}"}} 1.0'
        in metrics
    )


def test_prediction_frame_from_the_plain_endpoint_equals_the_package(
    server: Server, served_run: ServedRun
) -> None:
    rows = served_run.rows.iloc[10:14]
    records = json.loads(rows.to_json(orient="records"))
    body = httpx.post(server.url + "/v2/models/clf/predict", json={"rows": records}).json()
    got = pd.Series([p["prediction"] for p in body["predictions"]])
    want = mlsmith.load_package(served_run.path).predict(rows)["prediction"].reset_index(drop=True)
    assert got.equals(want)


def test_a_shadow_never_slows_the_answer(
    server_factory: Any, served_run: ServedRun, second_run: ServedRun, tmp_path: Path
) -> None:
    """The shadow runs after the response has gone: with it, a request's latency is the same
    as without it. Requests alternate between the two servers (so the machine's noise hits both
    alike), each followed by a pause in which the shadow's work gets done."""
    alone = {"variants": [{"name": "champion", "model": str(served_run.path), "weight": 1}]}
    shadowed = alone | {"shadow": {"name": "shadow", "model": str(second_run.path)}}
    servers = []
    for name, route in (("shadowed", shadowed), ("alone", alone)):
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump({"routes": {"clf": route}}))
        servers.append(server_factory(["--config", str(config)]))
    # Every row in one request: the shadow's inference costs as much as the answer's.
    body = json.dumps({"inputs": v2_inputs(served_run.rows)})
    latencies: dict[int, list[float]] = {0: [], 1: []}
    with httpx.Client(timeout=30) as client:
        for round_ in range(90):
            for i, server in enumerate(servers):
                started = time.perf_counter()
                response = client.post(server.url + "/v2/models/clf/infer", content=body)
                elapsed = time.perf_counter() - started
                assert response.status_code == 200
                if round_ >= 10:  # warm-up
                    latencies[i].append(elapsed)
                time.sleep(0.03)
    with_shadow, without = (sorted(latencies[i])[len(latencies[i]) // 2] for i in (0, 1))
    # On the response path the shadow would add its own inference, a fifth of the latency here.
    assert with_shadow <= 1.1 * without + 0.0003, (with_shadow, without)
    report = httpx.get(servers[0].url + "/v2/models/clf/ab", timeout=60).json()
    assert report["shadow"]["n_requests"] >= 80  # the shadow did run, after each answer
