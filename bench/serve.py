"""Serving throughput and latency: ``mlsmith serve`` against ``mlflow models serve`` on one package.

One trained run (a small tabular MLP: ``examples/tabular.yaml``, breast cancer, 30 numeric
features) is served on loopback by MLflow's own scoring server (what a user would otherwise run;
one worker, its default) and by ``mlsmith serve`` (one worker, its default), one server at a
time. The same client measures every server: one-row requests over keep-alive connections, one
connection per concurrent client, each sending its next request as soon as its answer arrives
(closed loop), at concurrency 1, 8 and 64; each cell runs a warm-up, then a fixed window whose
completed requests give the throughput and the p50/p99 latencies. Like is compared with like:
one row as MLflow's ``dataframe_split`` JSON to ``/invocations`` and as v2 JSON tensors to
``/v2/models/NAME/infer`` (and as ``{"rows": [...]}`` to ``.../predict``). Every server's answer
on the example rows is first checked against the package's in-process predictions, so all of
them serve the same model.

The client is a minimal HTTP/1.1 client on asyncio protocols (pre-encoded requests, no header
parsing beyond Content-Length), so on 2 cores it is not what limits the figures: the table
reports the CPU the client and the server used per second of the window (1.00 = one core); a
server cell whose server side is well under one core while the client's is near one would be
client-bound. "other CPU" is what the rest of the machine used meanwhile: above a few tenths,
something else was running and the cell is not to be trusted (its progress line says so). The
in-process one-row latency of the package (``Package.predict`` and MLflow's
``pyfunc.predict``) is the floor a server adds to.

    python bench/serve.py                          # trains the run; about 2 minutes on 2 cores
    python bench/serve.py --run runs/tabular/RUN   # an existing run with a package
    python bench/serve.py --sweep                  # also batching.max_latency_ms 0, 0.5, 2 and
                                                   # max_batch_size 16, 256 (2 more minutes)
    python bench/serve.py --only mlsmith --set drift.enabled=false   # one server, a setting

The client runs in this process and the servers one at a time beside it: run nothing else
heavy meanwhile. MLflow serves the package's own copy of the runtime (``code/``), mlsmith the
installed one; after a runtime change, let the bench train a fresh run so both serve the same.

The last lines compare against the goals: p99 under 10 ms at concurrency 8, at least 10x
MLflow's throughput, batching at least 2x at concurrency 64 for at most 1 ms of p50 at
concurrency 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tabular.yaml"
HOST = "127.0.0.1"
SERVED_NAME = "bench"
READY = "mlsmith serve: listening on "
CONCURRENCY = (1, 8, 64)


# --- the client ----------------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request in flight at a time.

    Just enough HTTP for a benchmark against known servers: the status code, Content-Length
    framing (both servers answer with it; anything else is an error, not a silent misread).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.head_end = -1
        self.total = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport  # asyncio sets TCP_NODELAY on TCP transports

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.total < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            match = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
            if match is None:
                self._fail(ConnectionError(f"no Content-Length in {head[:200]!r}"))
                return
            self.head_end = end + 4
            self.total = self.head_end + int(match.group(1))
        if len(self.buffer) >= self.total:
            status = int(self.buffer[9:12])
            body = bytes(self.buffer[self.head_end : self.total])
            del self.buffer[: self.total]
            self.total = -1
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("the server closed the connection"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return await self.waiter


def http_request(port: int, path: str, body: bytes) -> bytes:
    """A complete POST request, encoded once and sent many times."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass
class Cell:
    """One server x endpoint x concurrency measurement."""

    concurrency: int
    requests: int
    seconds: float
    latencies_ms: np.ndarray
    errors: int
    first_error: str = ""
    client_cores: float = 0.0
    server_cores: float = 0.0
    other_cores: float = 0.0  # everything else on the machine: should stay near 0
    batch_requests: float | None = None  # mean requests per inference call (mlsmith only)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else np.nan


async def _measure(
    port: int,
    payloads: list[bytes],
    concurrency: int,
    warmup: float,
    duration: float,
    server_pids: list[int],
) -> Cell:
    """Closed-loop load: ``concurrency`` connections, each sending its next request as soon as
    its answer arrives; requests completed inside the window count."""
    loop = asyncio.get_running_loop()
    connections = []
    for _ in range(concurrency):
        _, protocol = await loop.create_connection(_Connection, HOST, port)
        connections.append(protocol)
    start = time.perf_counter()
    window_start, window_end = start + warmup, start + warmup + duration
    done: list[tuple[float, float, int]] = []  # (sent, answered, status) inside the window
    errors: list[str] = []
    cpu: dict[str, float] = {}

    def snapshot(tag: str) -> None:
        cpu[f"client_{tag}"] = time.process_time()
        cpu[f"server_{tag}"] = _cpu_seconds(server_pids)
        cpu[f"machine_{tag}"] = _machine_busy_seconds()

    loop.call_at(loop.time() + warmup, snapshot, "start")
    loop.call_at(loop.time() + warmup + duration, snapshot, "end")

    async def client(index: int, connection: _Connection) -> None:
        k = index
        while True:
            sent = time.perf_counter()
            if sent >= window_end:
                return
            status, body = await connection.request(payloads[k % len(payloads)])
            answered = time.perf_counter()
            k += 1
            if window_start <= answered <= window_end:
                done.append((sent, answered, status))
                if status != 200 and not errors:
                    errors.append(f"{status} {body[:300]!r}")

    gc.disable()  # a collection in the client would show up as server latency
    try:
        await asyncio.gather(*(client(i, c) for i, c in enumerate(connections)))
    finally:
        gc.enable()
        for connection in connections:
            if connection.transport is not None:
                connection.transport.close()
    await asyncio.sleep(0.05)  # let the last snapshot run if the final answer came early
    ok = [(s, a) for s, a, status in done if status == 200]
    return Cell(
        concurrency=concurrency,
        requests=len(ok),
        seconds=duration,
        latencies_ms=np.asarray([(a - s) * 1000 for s, a in ok]),
        errors=len(done) - len(ok),
        first_error=errors[0] if errors else "",
        client_cores=(cpu["client_end"] - cpu["client_start"]) / duration,
        server_cores=(cpu["server_end"] - cpu["server_start"]) / duration,
        other_cores=(
            (cpu["machine_end"] - cpu["machine_start"])
            - (cpu["client_end"] - cpu["client_start"])
            - (cpu["server_end"] - cpu["server_start"])
        )
        / duration,
    )


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # up to steal; guests are in user


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and all their descendants so far."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0.0, list(pids)
    tick = os.sysconf("SC_CLK_TCK")
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


# --- the servers -------------------------------------------------------------------------------


@dataclass
class Server:
    """A server process (and its children) in its own session, stopped as a group."""

    label: str
    role: str  # mlflow | mlsmith | no-batching | sweep: what the summary tables look up
    process: subprocess.Popen[bytes]
    port: int
    log: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        # The group may outlive its leader (MLflow's CLI runs uvicorn as a child).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def _pump(stream: Any, lines: list[str]) -> None:
    def read() -> None:
        for line in stream:
            lines.append(line.decode(errors="replace"))

    threading.Thread(target=read, daemon=True).start()


def start_mlsmith(
    run: Path, extra: list[str], label: str, role: str, settings: list[str]
) -> Server:
    """``mlsmith serve bench=RUN --port 0 EXTRA --set S...``; returns once it is ready."""
    command = [sys.executable, "-m", "mlsmith", "serve", f"{SERVED_NAME}={run}", "--port", "0"]
    extra = [*extra, *(a for setting in settings for a in ("--set", setting))]
    label += "".join(f" --set {setting}" for setting in settings)
    process = subprocess.Popen(
        [*command, *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stderr is not None
    lines: list[str] = []
    server = Server(label, role, process, 0, lines)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            line = process.stderr.readline().decode(errors="replace")
            if not line and process.poll() is not None:
                raise SystemExit(f"mlsmith serve exited {process.returncode}: {''.join(lines)}")
            lines.append(line)
            if line.startswith(READY):
                server.port = int(line[len(READY) :].split()[0].rsplit(":", 1)[1])
                _pump(process.stderr, lines)
                # With --workers N the line comes when the port is bound, before the workers
                # have loaded the model: ready means the health endpoint answers.
                _wait_ready(server, "/v2/health/ready", deadline)
                return server
        raise SystemExit(f"mlsmith serve not ready after 120 s: {''.join(lines)}")
    except BaseException:
        server.stop()
        raise


def start_mlflow(package: Path, workers: int) -> Server:
    """``mlflow models serve -m PACKAGE --env-manager local``; returns once /ping answers."""
    port = _free_port()
    bin_dir = str(Path(sys.executable).parent)  # the CLI starts `uvicorn` from PATH
    process = subprocess.Popen(
        [
            *[sys.executable, "-m", "mlflow", "models", "serve", "-m", str(package)],
            *["--env-manager", "local", "--host", HOST, "-p", str(port), "-w", str(workers)],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    lines: list[str] = []
    _pump(process.stdout, lines)
    server = Server(f"mlflow models serve ({workers} worker)", "mlflow", process, port, lines)
    try:
        _wait_ready(server, "/ping", time.monotonic() + 120)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: Server, path: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SystemExit(
                f"{server.label} exited {server.process.returncode}: {''.join(server.log)}"
            )
        try:
            with urllib.request.urlopen(f"http://{HOST}:{server.port}{path}", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{server.label} not ready: {''.join(server.log)}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=10) as response:
        return bytes(response.read())


def _post(port: int, path: str, body: bytes) -> Any:
    request = urllib.request.Request(
        f"http://{HOST}:{port}{path}", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _batch_stats(port: int) -> tuple[float, float]:
    """(sum, count) of mlsmith's requests-per-inference-call histogram."""
    text = _get(port, "/metrics").decode()
    values = {}
    for suffix in ("sum", "count"):
        match = re.search(rf"^mlsmith_batch_requests_{suffix}\{{[^}}]*\}} (\S+)$", text, re.M)
        values[suffix] = float(match.group(1)) if match else 0.0
    return values["sum"], values["count"]


# --- what is sent ------------------------------------------------------------------------------


@dataclass
class Endpoint:
    """One way of asking a server for one row: its request bodies and how to read the answer."""

    label: str
    path: str
    bodies: list[bytes]
    prediction: Any  # answer JSON -> the row's predicted label


def mlflow_endpoint(rows: pd.DataFrame) -> Endpoint:
    bodies = [
        json.dumps(
            {"dataframe_split": {"columns": list(rows.columns), "data": [row.tolist()]}}
        ).encode()
        for _, row in rows.iterrows()
    ]
    return Endpoint(
        "/invocations (dataframe_split)",
        "/invocations",
        bodies,
        lambda answer: answer["predictions"][0]["prediction"],
    )


def infer_endpoint(rows: pd.DataFrame, datatypes: dict[str, str]) -> Endpoint:
    def tensor(column: str, value: Any) -> dict[str, Any]:
        datatype = datatypes[column]
        data = [value if datatype == "BYTES" else (None if pd.isna(value) else float(value))]
        return {"name": column, "shape": [1], "datatype": datatype, "data": data}

    bodies = [
        json.dumps({"inputs": [tensor(c, row[c]) for c in rows.columns]}).encode()
        for _, row in rows.iterrows()
    ]

    def prediction(answer: dict[str, Any]) -> Any:
        return next(o for o in answer["outputs"] if o["name"] == "prediction")["data"][0]

    return Endpoint("v2 /infer (JSON)", f"/v2/models/{SERVED_NAME}/infer", bodies, prediction)


def predict_endpoint(rows: pd.DataFrame) -> Endpoint:
    bodies = [
        json.dumps({"rows": [json.loads(row.to_json())]}).encode() for _, row in rows.iterrows()
    ]
    return Endpoint(
        "/predict (rows)",
        f"/v2/models/{SERVED_NAME}/predict",
        bodies,
        lambda answer: answer["predictions"][0]["prediction"],
    )


def check_answers(server: Server, endpoint: Endpoint, expected: list[Any]) -> None:
    """Every example row's answer is the package's own prediction."""
    got = [endpoint.prediction(_post(server.port, endpoint.path, b)) for b in endpoint.bodies]
    if [str(g) for g in got] != [str(e) for e in expected]:
        raise SystemExit(f"{server.label} {endpoint.label}: predicted {got}, expected {expected}")


# --- in process --------------------------------------------------------------------------------


def in_process_ms(predict: Any, rows: pd.DataFrame, calls: int = 300) -> float:
    """Median milliseconds of ``predict`` on one row (after a warm-up)."""
    frames = [rows.iloc[[i]].reset_index(drop=True) for i in range(len(rows))]
    for frame in frames * 10:
        predict(frame)
    times = []
    for i in range(calls):
        started = time.perf_counter()
        predict(frames[i % len(frames)])
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Result:
    server: str
    role: str
    endpoint: str
    cell: Cell


def bench_server(
    server: Server,
    endpoints: list[Endpoint],
    expected: list[Any],
    args: argparse.Namespace,
    concurrency: tuple[int, ...] = CONCURRENCY,
    mlsmith: bool = True,
) -> list[Result]:
    """Every endpoint at every concurrency on one running server."""
    results = []
    try:
        for endpoint in endpoints:
            check_answers(server, endpoint, expected)
            payloads = [http_request(server.port, endpoint.path, b) for b in endpoint.bodies]
            for level in concurrency:
                before = _batch_stats(server.port) if mlsmith else None
                cell = asyncio.run(
                    _measure(
                        server.port,
                        payloads,
                        level,
                        args.warmup,
                        args.seconds,
                        [server.process.pid],
                    )
                )
                if before is not None:
                    after = _batch_stats(server.port)
                    calls = after[1] - before[1]
                    cell.batch_requests = (after[0] - before[0]) / calls if calls else None
                results.append(Result(server.label, server.role, endpoint.label, cell))
                print(
                    f"  {server.label} {endpoint.label} c={level}: {cell.throughput:,.0f} req/s, "
                    f"p50 {cell.percentile(50):.2f} ms, p99 {cell.percentile(99):.2f} ms"
                    + (f", {cell.errors} errors: {cell.first_error}" if cell.errors else "")
                    + (
                        f" (WARNING: other processes used {cell.other_cores:.2f} cores)"
                        if cell.other_cores > 0.2
                        else ""
                    ),
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        server.stop()
    return results


def train_run(directory: Path) -> Path:
    """The small tabular MLP of examples/tabular.yaml, with its package."""
    import mlsmith

    run = mlsmith.train(
        str(EXAMPLE),
        [f"output_dir={directory}", "export.package=true"],
        progress=False,
        epoch_lines=False,
    )
    return Path(run.path)


def example_rows(run: Path) -> pd.DataFrame:
    """The package's input example (a few raw rows, MLflow's split orient)."""
    example = json.loads((run / "package" / "input_example.json").read_text())
    return pd.DataFrame(example["data"], columns=example["columns"])


def machine() -> str:
    """The CPU, cores and the libraries the figures depend on."""
    import mlflow
    import onnxruntime
    import torch
    import uvicorn

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            ln.split(":", 1)[1] for ln in cpuinfo.read_text().splitlines() if "model name" in ln
        ]
        cpu = names[0].strip() if names else cpu
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    extras = [m for m in ("uvloop", "httptools") if _installed(m)]
    return (
        f"{cpu}, {cores} cores, Python {platform.python_version()}, torch "
        f"{torch.__version__.split('+')[0]}, onnxruntime {onnxruntime.__version__}, mlflow "
        f"{mlflow.__version__}, uvicorn {uvicorn.__version__} "
        f"({'+'.join(extras) if extras else 'asyncio loop, h11'})"
    )


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    print()


def _cells(results: list[Result], role: str, endpoint: str) -> dict[int, Cell]:
    return {r.cell.concurrency: r.cell for r in results if (r.role, r.endpoint) == (role, endpoint)}


def report(results: list[Result], floors: dict[str, float], args: argparse.Namespace) -> None:
    print()
    print(f"machine: {machine()}")
    print(
        f"one-row requests, keep-alive, closed loop; {args.warmup:g} s warm-up then a "
        f"{args.seconds:g} s window per cell; latencies in ms"
    )
    print(
        "in-process one-row latency (median): "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in floors.items())
    )
    print()
    mlflow = _cells(results, "mlflow", "/invocations (dataframe_split)")
    ours = _cells(results, "mlsmith", "v2 /infer (JSON)")
    off = _cells(results, "no-batching", "v2 /infer (JSON)")
    _table(
        [
            "concurrency",
            "MLflow req/s",
            "MLflow p50",
            "MLflow p99",
            "mlsmith req/s",
            "mlsmith p50",
            "mlsmith p99",
            "throughput ratio (mlsmith / MLflow)",
            "p99 ratio (MLflow / mlsmith)",
        ],
        [
            [
                str(c),
                f"{mlflow[c].throughput:,.0f}",
                f"{mlflow[c].percentile(50):.2f}",
                f"{mlflow[c].percentile(99):.2f}",
                f"{ours[c].throughput:,.0f}",
                f"{ours[c].percentile(50):.2f}",
                f"{ours[c].percentile(99):.2f}",
                f"{ours[c].throughput / mlflow[c].throughput:.1f}x",
                f"{mlflow[c].percentile(99) / ours[c].percentile(99):.1f}x",
            ]
            for c in CONCURRENCY
            if c in mlflow and c in ours
        ],
    )
    _table(
        [
            "concurrency",
            "batching on req/s",
            "off req/s",
            "throughput ratio (on / off)",
            "on p50",
            "off p50",
            "p50 cost of batching (ms)",
            "on p99",
            "off p99",
            "requests per call (on)",
        ],
        [
            [
                str(c),
                f"{ours[c].throughput:,.0f}",
                f"{off[c].throughput:,.0f}",
                f"{ours[c].throughput / off[c].throughput:.2f}x",
                f"{ours[c].percentile(50):.2f}",
                f"{off[c].percentile(50):.2f}",
                f"{ours[c].percentile(50) - off[c].percentile(50):+.2f}",
                f"{ours[c].percentile(99):.2f}",
                f"{off[c].percentile(99):.2f}",
                f"{ours[c].batch_requests:.1f}" if ours[c].batch_requests else "-",
            ]
            for c in CONCURRENCY
            if c in ours and c in off
        ],
    )
    _table(
        [
            "server",
            "endpoint",
            "concurrency",
            "req/s",
            "p50",
            "p99",
            "errors",
            "server CPU (cores)",
            "client CPU (cores)",
            "other CPU (cores)",
            "requests per call",
        ],
        [
            [
                r.server,
                r.endpoint,
                str(r.cell.concurrency),
                f"{r.cell.throughput:,.0f}",
                f"{r.cell.percentile(50):.2f}",
                f"{r.cell.percentile(99):.2f}",
                str(r.cell.errors),
                f"{r.cell.server_cores:.2f}",
                f"{r.cell.client_cores:.2f}",
                f"{r.cell.other_cores:.2f}",
                f"{r.cell.batch_requests:.1f}" if r.cell.batch_requests else "-",
            ]
            for r in results
        ],
    )
    goals = []
    if 8 in ours:
        p99 = ours[8].percentile(99)
        goals.append(f"p99 at concurrency 8: {p99:.2f} ms (goal < 10 ms: {_ok(p99 < 10)})")
    if 8 in ours and 8 in mlflow:
        ratio = ours[8].throughput / mlflow[8].throughput
        goals.append(
            f"throughput / MLflow at concurrency 8: {ratio:.1f}x (goal >= 10x: {_ok(ratio >= 10)})"
        )
    if 64 in ours and 64 in off:
        ratio = ours[64].throughput / off[64].throughput
        goals.append(f"batching at concurrency 64: {ratio:.2f}x (goal >= 2x: {_ok(ratio >= 2)})")
    if 1 in ours and 1 in off:
        cost = ours[1].percentile(50) - off[1].percentile(50)
        goals.append(
            f"batching p50 cost at concurrency 1: {cost:+.2f} ms (goal <= 1 ms: {_ok(cost <= 1)})"
        )
    for line in goals:
        print(line)


def _ok(passed: bool) -> str:
    return "met" if passed else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--run", type=Path, help="a run directory with a package (default: train one)"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up per cell")
    parser.add_argument("--mlflow-workers", type=int, default=1, help="MLflow's default: 1")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="also serve with batching.max_latency_ms 0, 0.5, 2 and max_batch_size 16, 256",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["mlflow", "mlsmith", "no-batching", "sweep"],
        help="run only these servers (the comparison tables need mlflow, mlsmith, no-batching)",
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to every mlsmith server, e.g. --set drift.enabled=false (repeatable)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("mlsmith").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    wanted = set(
        args.only or ["mlflow", "mlsmith", "no-batching", *(["sweep"] if args.sweep else [])]
    )
    print(f"machine: {machine()}", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        if args.run is None:
            print("training examples/tabular.yaml...", file=sys.stderr, flush=True)
            run = train_run(Path(tmp))
        else:
            run = args.run.resolve()
        rows = example_rows(run)

        import mlflow.pyfunc

        import mlsmith

        package = mlsmith.load_package(run)
        expected = list(package.predict(rows)["prediction"])
        pyfunc = mlflow.pyfunc.load_model(str(run / "package"))
        floors = {
            "mlsmith Package.predict": in_process_ms(package.predict, rows),
            "MLflow pyfunc.predict": in_process_ms(pyfunc.predict, rows),
        }
        print(f"in process: {floors}", file=sys.stderr, flush=True)

        results: list[Result] = []
        if "mlflow" in wanted:
            server = start_mlflow(run / "package", args.mlflow_workers)
            results += bench_server(server, [mlflow_endpoint(rows)], expected, args, mlsmith=False)
        # mlsmith's servers: (extra arguments, label, role), one at a time.
        servers: list[tuple[list[str], str, str]] = []
        if "mlsmith" in wanted:
            servers.append(([], "mlsmith serve", "mlsmith"))
        if "no-batching" in wanted:
            servers.append((["--no-batching"], "mlsmith serve --no-batching", "no-batching"))
        if "sweep" in wanted:
            for setting in [
                *(f"batching.max_latency_ms={v}" for v in ("0", "0.5", "2")),
                *(f"batching.max_batch_size={v}" for v in ("16", "256")),
            ]:
                servers.append((["--set", setting], f"mlsmith serve --set {setting}", "sweep"))
        for extra, label, role in servers:
            server = start_mlsmith(run, extra, label, role, args.settings)
            try:
                # The datatypes a v2 client reads from the model's metadata.
                metadata = json.loads(_get(server.port, f"/v2/models/{SERVED_NAME}"))
            except BaseException:
                server.stop()
                raise
            datatypes = {i["name"]: i["datatype"] for i in metadata["inputs"]}
            endpoints = [infer_endpoint(rows, datatypes)]
            if role == "mlsmith":
                endpoints.append(predict_endpoint(rows))
            results += bench_server(server, endpoints, expected, args)
    report(results, floors, args)


if __name__ == "__main__":
    main()
