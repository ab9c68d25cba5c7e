"""The server's prediction log and drift gauges, read back by `mlsmith monitor`."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx
from tests.serving.conftest import ServedRun
from tests.serving.test_server import v2_inputs

from mlsmith.cli import main


def test_served_requests_are_logged_and_monitored(
    server_factory: Any, served_run: ServedRun, tmp_path: Path, capsys: Any
) -> None:
    log_dir = tmp_path / "log"
    server = server_factory(
        [str(served_run.path), "--log-dir", str(log_dir), "--set", "log.flush_seconds=0.2"]
    )
    rows = served_run.rows
    with httpx.Client(timeout=30) as client:
        for start in range(0, 300, 10):
            body = {"id": f"r{start}", "inputs": v2_inputs(rows.iloc[start : start + 10])}
            response = client.post(server.url + "/v2/models/clf/infer", json=body)
            assert response.status_code == 200, response.text
        metrics = client.get(server.url + "/metrics").text
    gauges = [line for line in metrics.splitlines() if line.startswith("mlsmith_feature_psi{")]
    assert {g.split('feature="')[1].split('"')[0] for g in gauges} == {"x1", "x2", "size", "color"}
    assert all(float(g.rsplit(" ", 1)[1]) < 0.25 for g in gauges), gauges
    assert server.stop(signal.SIGTERM) == 0  # the drain flushes the log
    files = list(log_dir.glob("*.parquet"))
    assert files and not list(log_dir.glob("*.tmp"))

    code = _cli(["monitor", str(served_run.path), "--log", str(log_dir), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["rows"] == 300 and out["drifted_features"] == []


def _cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0
