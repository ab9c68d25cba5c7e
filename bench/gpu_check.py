"""What only a CUDA GPU can check, end to end through the real ``mlsmith`` CLI, in a few minutes.

The test suite runs on CPUs; the CUDA paths (the device itself, fp16 with its GradScaler, bf16,
channels-last convolutions, ``torch.compile``, ONNX Runtime's CUDA provider, the diagnosis of a
model too big for the GPU, NCCL) are exercised here, when a session is lent a GPU machine for a
few minutes. ``bench/gpu_check.sh`` picks the Python and calls this script under ``timeout``.

Every check is one row: ``name``, ``status`` (pass / fail / skip), ``seconds`` and ``detail``
(a key figure, or the last line of the error). Each runs ``python -m mlsmith ...`` (or torchrun)
in a subprocess with its own timeout, on small data generated into a temporary folder (a
3,000-row table, and 3 classes x 40 PNG images of 16x16), so one hang cannot eat the budget;
the whole script also stops starting checks when its ``--budget`` is spent. Without CUDA every
CUDA row is ``skip`` ("no CUDA device") and the CPU rows still run (FSDP over two gloo
processes). The results go to ``OUT/gpu_check.md`` and ``OUT/gpu_check.json`` (rewritten after
every check, so a killed script still leaves what it had) and each check's output to
``OUT/logs/``; the table is printed at the end. Exit status: 1 when any row failed, else 0.

    bash bench/gpu_check.sh                       # OUT=... to choose the folder
    python bench/gpu_check.py --out DIR [--budget 300] [--keep]
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
Status = Literal["pass", "fail", "skip"]

NO_CUDA = "no CUDA device"
NO_ORT_CUDA = "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
ONE_GPU = "one GPU: NCCL needs one GPU per process"
# ONNX Runtime's CUDA provider may use TF32 matmuls on recent GPUs: raw outputs of the small MLP
# then differ from the CPU provider's by ~1e-3 at most; a wrong graph differs by far more.
ORT_TOLERANCE = 5e-3
# The OOM check: one hidden layer this wide on a batch of ~2,100 rows needs ~260 GiB for its
# first activation alone, more than any single GPU; the weights themselves are ~1 GB.
OOM_WIDTH = 2**25
OOM_BATCH = 4096


class CheckFailed(Exception):
    """A check's assertion did not hold; the message is the row's detail."""


class Skipped(Exception):
    """A check cannot run here; the message is the row's detail."""


class Terminated(BaseException):
    """SIGTERM arrived (``timeout`` in gpu_check.sh, or a person): stop, record, clean up."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(signum)


@dataclass
class Row:
    """One line of the table."""

    name: str
    what: str
    cuda: bool
    status: Status = "skip"
    seconds: float = 0.0
    detail: str = "not run: the script stopped before this check"


@dataclass
class Proc:
    """What a finished subprocess left."""

    code: int
    stdout: str
    stderr: str


@dataclass
class Context:
    """Shared by the checks: where things are, what the machine has, the time left."""

    work: Path
    out: Path
    deadline: float
    environment: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, Path] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return bool(self.environment.get("cuda"))

    def left(self) -> float:
        return self.deadline - time.monotonic()


# --- subprocesses ------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """This environment, with the working tree's ``src`` first on the path (a carried venv's
    editable install may point at another checkout) and unbuffered output."""
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(
    args: Sequence[str | Path], ctx: Context, timeout: float, log: str, *, cwd: Path | None = None
) -> Proc:
    """Run ``args`` in its own process group, killed whole (torchrun's workers too) when it
    outlives ``timeout`` or the script's budget; its output is appended to ``logs/<log>.log``."""
    limit = min(timeout, ctx.left())
    if limit < 5:
        raise Skipped(f"not run: the script's time budget is spent ({ctx.left():.0f} s left)")
    command = [str(a) for a in args]
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=cwd or ctx.work,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    timed_out = False
    try:
        stdout, stderr = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process)
        stdout, stderr = process.communicate()
    except BaseException:  # SIGTERM or Ctrl-C: the child's own session must not outlive us
        _kill_group(process)
        raise
    _log(ctx, log, command, process.returncode, time.monotonic() - started, stdout, stderr)
    if timed_out:
        raise CheckFailed(f"timed out after {limit:.0f} s: {last_line(stderr or stdout)}")
    return Proc(process.returncode, stdout, stderr)


def _kill_group(process: subprocess.Popen[str]) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _log(
    ctx: Context, name: str, command: list[str], code: int, seconds: float, out: str, err: str
) -> None:
    folder = ctx.out / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    tail = 400  # lines of each stream kept: enough for a traceback, small enough to bring back
    text = (
        f"$ {' '.join(command)}\n# exit {code} after {seconds:.1f} s\n"
        f"## stdout\n{_tail(out, tail)}\n## stderr\n{_tail(err, tail)}\n\n"
    )
    with (folder / f"{name}.log").open("a") as handle:
        handle.write(text)


def _tail(text: str, lines: int) -> str:
    kept = text.splitlines()[-lines:]
    return "\n".join(kept)


def last_line(text: str) -> str:
    """The line that says what went wrong: mlsmith's ``error:`` line, else the last line naming
    an exception, else the last line with words (rich's table borders are skipped)."""
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if re.search(r"[A-Za-z0-9]", line)]
    for pattern in (r"^error:", r"(Error|Exception)\b"):
        for line in reversed(lines):
            if re.search(pattern, line):
                return _short(line)
    return _short(lines[-1]) if lines else "(no output)"


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def helper(ctx: Context, name: str, *args: str | Path, timeout: float = 60) -> dict[str, Any]:
    """Run one of this script's own helper modes (torch and ONNX Runtime stay out of this
    process) and return the JSON it prints."""
    proc = run([sys.executable, Path(__file__).resolve(), f"--{name}", *args], ctx, timeout, name)
    if proc.code != 0:
        raise CheckFailed(f"{name} helper exited {proc.code}: {last_line(proc.stderr)}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --- data and configs ----------------------------------------------------------------------------


def write_table(path: Path, rows: int = 3000, seed: int = 0) -> Path:
    """A binary table with a learnable signal: three numeric columns (a few gaps), one
    categorical, and ``label`` (yes/no)."""
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["x1", "x2", "size", "color", "label"])
        for _ in range(rows):
            x1, x2 = rng.gauss(0, 1), rng.gauss(0, 1)
            color = rng.choice(["red", "green", "blue"])
            signal_ = 1.5 * x1 - x2 + (1.0 if color == "red" else 0.0) + rng.gauss(0, 0.5)
            writer.writerow(
                [
                    f"{x1:.6f}",
                    "" if rng.random() < 0.05 else f"{x2:.6f}",
                    rng.randint(1, 99),
                    color,
                    "yes" if signal_ > 0 else "no",
                ]
            )
    return path


def write_images(root: Path, classes: int = 3, per_class: int = 40, size: int = 16) -> Path:
    """One folder per class of ``size`` x ``size`` RGB PNGs: a bright blob at a class-specific
    place on a dark, noisy background (as tests/image_data.py draws them)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        angle = 2 * math.pi * label / classes
        for i in range(per_class):
            image = rng.integers(0, 60, size=(size, size, 3)).astype(np.uint8)
            y = int(size / 2 + size / 4 * math.sin(angle)) + int(rng.integers(-1, 2))
            x = int(size / 2 + size / 4 * math.cos(angle)) + int(rng.integers(-1, 2))
            tint = [255, 200 + 25 * (label % 3), 255 - 60 * (label % 3)]
            image[max(0, y - 2) : y + 2, max(0, x - 2) : x + 2] = tint
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root


def write_config(
    ctx: Context,
    name: str,
    data: dict[str, Any],
    model: dict[str, Any],
    train: dict[str, Any] | None = None,
) -> Path:
    """A fast config (as tests/conftest.py::config_dict): few epochs, no tracking, no reports,
    no baseline, no package. JSON is YAML, so no YAML library is needed here."""
    config = {
        "experiment": name,
        "seed": 0,
        "output_dir": str(ctx.work / "runs" / name),
        "data": data,
        "model": model,
        "train": {"epochs": 3, "batch_size": 64, **(train or {})},
        "track": {"enabled": False},
        "eval": {"bootstrap": 100, "report": False, "baseline": False},
        "export": {"package": False},
    }
    path = ctx.work / f"{name}.yaml"
    path.write_text(json.dumps(config, indent=2))
    return path


def tabular_config(ctx: Context, name: str, hidden: list[int] | None = None) -> Path:
    data = {"path": str(ctx.work / "table.csv"), "target": "label"}
    return write_config(ctx, name, data, {"type": "mlp", "hidden": hidden or [16], "dropout": 0.0})


def run_dir(ctx: Context, name: str) -> Path:
    """The one run directory a check's training wrote."""
    found = sorted(p.parent for p in (ctx.work / "runs" / name).glob("*/*/run.json"))
    if not found:
        raise CheckFailed(f"no run directory under {ctx.work / 'runs' / name}")
    return found[-1]


def train(ctx: Context, name: str, config: Path, *overrides: str, timeout: float = 120) -> Path:
    """``mlsmith train CONFIG OVERRIDES``; the run directory, checked finished."""
    proc = run([sys.executable, "-m", "mlsmith", "train", config, *overrides], ctx, timeout, name)
    if proc.code != 0:
        raise CheckFailed(f"mlsmith train exited {proc.code}: {last_line(proc.stderr)}")
    path = run_dir(ctx, name)
    info = read_json(path / "run.json")
    if info.get("status") != "finished":
        raise CheckFailed(f"run.json status is {info.get('status')!r}, not 'finished'")
    ctx.runs[name] = path
    return path


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def on_cuda(path: Path) -> str:
    """The run's device as run.json records it, checked to be CUDA; names the GPU."""
    environment = read_json(path / "run.json").get("environment", {})
    device = str(environment.get("device", ""))
    if not device.startswith("cuda"):
        raise CheckFailed(f"run.json says the run trained on {device!r}, not cuda")
    gpu = environment.get("hardware", {}).get("gpu")
    return f"{device} ({gpu})" if gpu else device


def history(path: Path) -> list[dict[str, str]]:
    with (path / "history.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def finite_losses(path: Path) -> dict[str, str]:
    """The last row of history.csv, after checking every epoch's losses are finite numbers."""
    rows = history(path)
    if not rows:
        raise CheckFailed("history.csv has no epochs")
    for row in rows:
        for key in ("train/loss", "val/loss"):
            value = float(row.get(key) or "nan")
            if not math.isfinite(value):
                raise CheckFailed(f"history.csv epoch {row.get('epoch')}: {key} is {value}")
    return rows[-1]


def figures(row: dict[str, str]) -> str:
    """A history row's key figures: validation loss, throughput and peak GPU memory."""
    parts = [f"val/loss {float(row['val/loss']):.4f}"]
    if row.get("samples_per_s"):
        parts.append(f"{float(row['samples_per_s']):,.0f} samples/s")
    if row.get("memory_mb"):
        parts.append(f"peak {float(row['memory_mb']):,.0f} MB")
    return ", ".join(parts)


# --- the checks ---------------------------------------------------------------------------------


def check_fp32(ctx: Context) -> str:
    path = train(ctx, "fp32", tabular_config(ctx, "fp32"), "train.device=cuda")
    last = finite_losses(path)
    # The per-epoch GPU figures (utilisation through NVML, reserved memory) on CUDA.
    if not last.get("gpu_memory_reserved_mb"):
        raise CheckFailed("history.csv has no gpu_memory_reserved_mb on CUDA")
    util = last.get("gpu_util_pct") or "missing (no NVML)"
    return f"{on_cuda(path)}; {figures(last)}; GPU util {util}%"


def check_fp16(ctx: Context) -> str:
    config = tabular_config(ctx, "fp16")
    path = train(ctx, "fp16", config, "train.device=cuda", "train.precision=16-mixed")
    device = on_cuda(path)
    last = finite_losses(path)
    state = helper(ctx, "inspect-checkpoint", path / "checkpoints" / "last.pt")
    scaler = state.get("precision")
    if not isinstance(scaler, dict) or not scaler:
        raise CheckFailed(f"last.pt holds no GradScaler state under 'precision': {scaler!r}")
    scale = scaler.get("scale")
    if not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise CheckFailed(f"last.pt's GradScaler scale is {scale!r}")
    return f"{device}; {figures(last)}; GradScaler scale {scale:g}"


def check_bf16(ctx: Context) -> str:
    if not ctx.environment.get("bf16"):
        raise Skipped("this GPU has no bf16 (torch.cuda.is_bf16_supported() is False)")
    config = tabular_config(ctx, "bf16")
    path = train(ctx, "bf16", config, "train.device=cuda", "train.precision=bf16-mixed")
    return f"{on_cuda(path)}; {figures(finite_losses(path))}"


def check_cnn(ctx: Context) -> str:
    data = {"type": "image", "path": str(write_images(ctx.work / "images"))}
    model = {"type": "cnn", "channels": [8, 16], "depth": 1, "dropout": 0.1}
    # As tests/image_data.py::image_config: small batches and a higher rate learn 84 images.
    train_ = {"batch_size": 16, "optimizer": {"lr": 0.01}}
    config = write_config(ctx, "cnn", data, model, train_)
    path = train(ctx, "cnn", config, "train.device=cuda", "model.channels_last=true")
    last = finite_losses(path)
    accuracy = f", val/accuracy {float(last['val/accuracy']):.3f}" if "val/accuracy" in last else ""
    return f"{on_cuda(path)}; {figures(last)}{accuracy}"


def check_compile(ctx: Context) -> str:
    config = tabular_config(ctx, "compile")
    path = train(ctx, "compile", config, "train.device=cuda", "train.compile=true", timeout=240)
    seconds = read_json(path / "run.json").get("train_seconds")
    took = f"; train {seconds:.1f} s (compilation included)" if seconds else ""
    return f"{on_cuda(path)}; {figures(finite_losses(path))}{took}"


def check_onnx(ctx: Context) -> str:
    """Export the CUDA fp32 run to ONNX, then run it on ONNX Runtime's CUDA provider and its
    CPU provider and compare the raw outputs."""
    source = ctx.runs.get("fp32")
    if source is None:
        # The fp32 row failed (its own row says why); train the run to export here.
        source = train(ctx, "onnx", tabular_config(ctx, "onnx"), "train.device=cuda")
    command: list[str | Path] = [sys.executable, "-m", "mlsmith", "export", source]
    command += ["--format", "onnx"]
    proc = run(command, ctx, 120, "onnx-export")
    if proc.code != 0:
        raise CheckFailed(f"mlsmith export exited {proc.code}: {last_line(proc.stderr)}")
    package = source / "package"
    if not (package / "MLmodel").is_file():
        raise CheckFailed(f"mlsmith export wrote no package at {package}")
    if "CUDAExecutionProvider" not in ctx.environment.get("ort_providers", []):
        raise Skipped(f"{NO_ORT_CUDA}; the export from the CUDA run passed")
    result = helper(ctx, "ort-compare", package, ctx.work / "table.csv", timeout=90)
    if result["providers"][:1] != ["CUDAExecutionProvider"]:
        raise CheckFailed(f"the CUDA session fell back to {result['providers']}")
    diff = float(result["max_abs_diff"])
    if not diff <= ORT_TOLERANCE:
        raise CheckFailed(f"CUDA vs CPU provider: max abs diff {diff:.2e} > {ORT_TOLERANCE:g}")
    return f"CUDA vs CPU provider on {result['rows']:,} rows: max abs diff {diff:.2e}"


def check_oom(ctx: Context) -> str:
    """A model far too big for the GPU must end in the Trainer's one-line diagnosis (exit 1,
    "ran out of memory in epoch ..." and what to change, on an ``error:`` line), not a
    traceback. The pre-flight is off so that training itself meets the full device (the
    pre-flight's own forward pass would report it first, as a failed check)."""
    config = tabular_config(ctx, "oom", hidden=[OOM_WIDTH])
    overrides = ["train.device=cuda", f"train.batch_size={OOM_BATCH}", "train.epochs=1"]
    overrides += ["train.preflight=false"]
    proc = run([sys.executable, "-m", "mlsmith", "train", config, *overrides], ctx, 150, "oom")
    if proc.code == 0:
        raise CheckFailed(f"training a {OOM_WIDTH:,}-wide layer on batch {OOM_BATCH} succeeded")
    if "Traceback (most recent call last)" in proc.stderr:
        raise CheckFailed(f"exit {proc.code} with a traceback: {last_line(proc.stderr)}")
    errors = [line.strip() for line in proc.stderr.splitlines() if line.startswith("error:")]
    pattern = r"ran out of memory in epoch \d+, step \d+ .*Likely fixes: lower train\.batch_size"
    said = [line for line in errors if re.search(pattern, line, re.I)]
    if not said:
        why = last_line(proc.stderr)
        raise CheckFailed(f"exit {proc.code} without an out-of-memory diagnosis: {why}")
    return f"exit {proc.code}: {_short(said[-1], 240)}"


def torchrun(ctx: Context, name: str, *overrides: str, timeout: float = 150) -> Path:
    """``torchrun --standalone --nproc-per-node 2 -m mlsmith train`` (a free port: nothing
    else on the machine is disturbed); the run directory, checked finished on 2 processes."""
    config = tabular_config(ctx, name)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "mlsmith", "train", str(config), *overrides]
    proc = run(command, ctx, timeout, name)
    if proc.code != 0:
        raise CheckFailed(f"torchrun exited {proc.code}: {last_line(proc.stderr)}")
    path = run_dir(ctx, name)
    info = read_json(path / "run.json")
    if info.get("status") != "finished" or info.get("world_size") != 2:
        raise CheckFailed(
            f"run.json: status {info.get('status')!r}, world_size {info.get('world_size')!r} "
            "(expected finished on 2)"
        )
    return path


def sharded_state(path: Path) -> str:
    """The FSDP optimizer shards, ``checkpoints/last.dcp.<step>/``, checked present (a run that
    silently fell back to DDP or one process writes none); loading last.pt is not needed."""
    shards = sorted((path / "checkpoints").glob("last.dcp.*"))
    if not shards:
        raise CheckFailed(f"no sharded checkpoint (last.dcp.<step>/) in {path / 'checkpoints'}")
    return f"sharded state in {shards[-1].name}/"


def check_fsdp_cpu(ctx: Context) -> str:
    path = torchrun(ctx, "fsdp-cpu", "train.device=cpu", "train.distributed.strategy=fsdp")
    return f"world_size 2 (gloo); {sharded_state(path)}; {figures(finite_losses(path))}"


def check_nccl(ctx: Context) -> str:
    if int(ctx.environment.get("device_count", 0)) < 2:
        raise Skipped(ONE_GPU)
    parts = []
    for strategy in ("ddp", "fsdp"):
        name = f"nccl-{strategy}"
        strategy_override = f"train.distributed.strategy={strategy}"
        path = torchrun(ctx, name, "train.device=cuda", strategy_override, timeout=120)
        on_cuda(path)
        shards = f", {sharded_state(path)}" if strategy == "fsdp" else ""
        parts.append(f"{strategy}: {figures(finite_losses(path))}{shards}")
    return "2 GPUs, NCCL; " + "; ".join(parts)


@dataclass
class Check:
    name: str
    what: str
    cuda: bool
    function: Callable[[Context], str]


# In the table's order. They run in ORDER: torch.compile, whose time varies most, runs last.
CHECKS = [
    Check("cuda-fp32-mlp", "train.device=cuda, fp32 MLP", True, check_fp32),
    Check("cuda-fp16-mixed", "train.precision=16-mixed: autocast + GradScaler", True, check_fp16),
    Check("cuda-bf16-mixed", "train.precision=bf16-mixed", True, check_bf16),
    Check("cuda-cnn-channels-last", "CNN on an image folder, channels_last", True, check_cnn),
    Check("cuda-compile", "train.compile=true (torch.compile) MLP", True, check_compile),
    Check("onnxruntime-cuda", "mlsmith export --format onnx; ORT CUDA vs CPU", True, check_onnx),
    Check("cuda-oom-diagnosis", "a model far too big: the OOM diagnosis", True, check_oom),
    Check("fsdp-torchrun-cpu", "torchrun 2 processes, FSDP on CPU (gloo)", False, check_fsdp_cpu),
    Check("nccl-ddp-fsdp", "torchrun on GPUs (NCCL), DDP and FSDP", True, check_nccl),
]
ORDER = [0, 1, 2, 3, 5, 6, 7, 8, 4]


# --- the table ----------------------------------------------------------------------------------


def markdown(rows: list[Row], environment: dict[str, Any]) -> str:
    lines = [f"GPU check: {describe(environment)}", ""]
    lines += ["| check | status | seconds | detail |", "|---|---|---:|---|"]
    for row in rows:
        detail = row.detail.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {row.name} | {row.status} | {row.seconds:.1f} | {detail} |")
    return "\n".join(lines) + "\n"


def describe(environment: dict[str, Any]) -> str:
    if "error" in environment:
        return f"torch could not be probed: {environment['error']}"
    gpu = environment.get("gpu") or NO_CUDA
    count = environment.get("device_count", 0)
    gpus = f"{count} x {gpu}" if count else gpu
    return (
        f"{gpus}; torch {environment.get('torch')} (CUDA {environment.get('torch_cuda')}); "
        f"onnxruntime {environment.get('onnxruntime')} "
        f"({', '.join(environment.get('ort_providers', [])) or '-'}); "
        f"python {environment.get('python')}"
    )


def write_results(out: Path, rows: list[Row], environment: dict[str, Any], done: bool) -> int:
    code = 1 if any(row.status == "fail" for row in rows) else 0
    payload = {
        "environment": environment,
        "cuda": bool(environment.get("cuda")),
        "complete": done,
        "exit_code": code,
        "rows": [asdict(row) for row in rows],
    }
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "gpu_check.json", json.dumps(payload, indent=2) + "\n")
    _write(out / "gpu_check.md", markdown(rows, environment))
    return code


def _write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


def probe(ctx: Context) -> dict[str, Any]:
    try:
        return helper(ctx, "probe", timeout=90)
    except (CheckFailed, Skipped, json.JSONDecodeError, IndexError) as error:
        return {"error": str(error)}


def main_checks(out: Path, budget: float, keep: bool) -> int:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    ctx = Context(work=work, out=out, deadline=started + budget)
    shutil.rmtree(out / "logs", ignore_errors=True)
    rows = [Row(c.name, c.what, c.cuda) for c in CHECKS]
    signal.signal(signal.SIGTERM, _terminate)
    try:
        ctx.environment = probe(ctx)
        write_table(work / "table.csv")
        write_results(out, rows, ctx.environment, done=False)
        for index in ORDER:
            check, row = CHECKS[index], rows[index]
            print(f"gpu_check: {check.name} ...", file=sys.stderr, flush=True)
            began = time.monotonic()
            try:
                row.status, row.detail = attempt(check, ctx)
            except Terminated:
                row.status, row.detail = "fail", "terminated (SIGTERM: the hard time limit?)"
                break
            finally:
                row.seconds = round(time.monotonic() - began, 1)
            print(f"gpu_check: {check.name}: {row.status} ({row.seconds:.1f} s)", file=sys.stderr)
            write_results(out, rows, ctx.environment, done=False)
    except Terminated:  # between two checks: the rows not run say so
        print("gpu_check: terminated", file=sys.stderr)
    finally:
        if keep:
            print(f"gpu_check: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    code = write_results(out, rows, ctx.environment, done=True)
    print(markdown(rows, ctx.environment))
    print(f"total {time.monotonic() - started:.0f} s; results in {out}")
    return code


def attempt(check: Check, ctx: Context) -> tuple[Status, str]:
    # GPU_CHECK_ONLY=name,name: run only those rows (a rerun of what failed, or a quick test).
    only = [name for name in os.environ.get("GPU_CHECK_ONLY", "").split(",") if name]
    if only and check.name not in only:
        return "skip", "not selected (GPU_CHECK_ONLY)"
    if check.cuda and "error" in ctx.environment:
        return "fail", f"torch could not be probed: {ctx.environment['error']}"
    if check.cuda and not ctx.cuda:
        return "skip", NO_CUDA
    try:
        return "pass", check.function(ctx)
    except Skipped as why:
        return "skip", str(why)
    except CheckFailed as why:
        return "fail", str(why)
    except Exception as error:  # a bug in the check or a missing library: still one row
        return "fail", _short(f"{type(error).__name__}: {error}")


# --- helper modes (run in a subprocess by the checks) ---------------------------------------------


def probe_environment() -> dict[str, Any]:
    """What the machine has: CUDA devices, bf16, ONNX Runtime's providers."""
    import platform

    import torch

    cuda = torch.cuda.is_available()
    found: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda": cuda,
        "device_count": torch.cuda.device_count() if cuda else 0,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
    }
    if cuda:
        free, total = torch.cuda.mem_get_info(0)
        found["gpu_memory_gib"] = round(total / 2**30, 1)
        found["gpu_free_gib"] = round(free / 2**30, 1)
    try:
        # Untyped, and optional here: imported by name.
        onnxruntime = importlib.import_module("onnxruntime")
        found["onnxruntime"] = onnxruntime.__version__
        found["ort_providers"] = list(onnxruntime.get_available_providers())
    except ImportError as error:
        found["onnxruntime"] = f"not importable: {error}"
        found["ort_providers"] = []
    return found


def inspect_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's plain values (loaded with weights_only=True): its keys, the precision
    state (the GradScaler's under 16-mixed), the strategy and the sharded state it names."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return {
        "keys": sorted(state),
        "precision": state.get("precision"),
        "strategy": state.get("strategy"),
        "sharded": state.get("sharded"),
        "world_size": state.get("world_size"),
    }


def ort_compare(package: Path, table: Path) -> dict[str, Any]:
    """The package's raw outputs on the table's rows from ONNX Runtime's CUDA provider and from
    its CPU provider, and the largest difference."""
    import numpy as np
    import pandas as pd

    # By name: mlsmith ships no type information, and this helper runs with src/ on the path.
    Package = importlib.import_module("mlsmith.runtime.package").Package

    frame = pd.read_csv(table).drop(columns=["label"])
    cpu = Package(package, providers=["CPUExecutionProvider"])
    gpu = Package(package, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    session = getattr(gpu.engine, "session", None)
    providers = list(session.get_providers()) if session is not None else []
    expected, found = cpu.raw(frame), gpu.raw(frame)
    return {
        "rows": len(frame),
        "providers": providers,
        "max_abs_diff": float(np.max(np.abs(expected.astype(np.float64) - found))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "gpu_check_out")
    parser.add_argument(
        "--budget", type=float, default=300.0, help="seconds for every check together"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    helpers = parser.add_mutually_exclusive_group()
    helpers.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    helpers.add_argument("--inspect-checkpoint", type=Path, help=argparse.SUPPRESS)
    helpers.add_argument("--ort-compare", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe_environment()))
        return 0
    if args.inspect_checkpoint:
        print(json.dumps(inspect_checkpoint(args.inspect_checkpoint), default=str))
        return 0
    if args.ort_compare:
        print(json.dumps(ort_compare(*args.ort_compare)))
        return 0
    return main_checks(args.out.resolve(), args.budget, args.keep)


if __name__ == "__main__":
    sys.exit(main())
