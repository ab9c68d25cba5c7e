"""bench/gpu_check.sh on a machine without CUDA: every CUDA row skips, the CPU rows still pass."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CUDA_ROWS = {
    "cuda-fp32-mlp",
    "cuda-fp16-mixed",
    "cuda-bf16-mixed",
    "cuda-cnn-channels-last",
    "cuda-compile",
    "onnxruntime-cuda",
    "cuda-oom-diagnosis",
    "nccl-ddp-fsdp",
}


@pytest.mark.timeout(120)
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the script where there is no CUDA")
def test_gpu_check_without_cuda_skips_cuda_rows_and_writes_its_table(tmp_path: Path) -> None:
    """The script's plumbing (Python choice, probe, table, JSON, exit code): every CUDA row
    skips here. Its CPU row (FSDP on two processes) is left out with GPU_CHECK_ONLY: the same
    training runs in tests/training/test_distributed.py."""
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "GPU_CHECK_NO_INSTALL": "1",
        "GPU_CHECK_ONLY": ",".join(sorted(CUDA_ROWS)),
    }
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = {row["name"]: row for row in result["rows"]}
    assert set(rows) == CUDA_ROWS | {"fsdp-torchrun-cpu"}
    assert result["cuda"] is False and result["complete"] is True
    for name in CUDA_ROWS:
        assert (rows[name]["status"], rows[name]["detail"]) == ("skip", "no CUDA device"), name
    fsdp = rows["fsdp-torchrun-cpu"]
    assert (fsdp["status"], fsdp["detail"]) == ("skip", "not selected (GPU_CHECK_ONLY)")
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| cuda-fp32-mlp | skip |" in table and table in done.stdout
