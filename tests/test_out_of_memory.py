"""Memory running out mid-training, for real: the host's allocator failing in a real `mlsmith
train` process (a user network asking for more than any machine has) is one diagnosis naming
where, the peak, and what to change; exit 1, no traceback, the last checkpoint intact."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tests.conftest import config_dict, make_table
from tests.training.test_trainer import batches, make_net, regression_data, train_config

from mlsmith.tasks import RegressionTask
from mlsmith.training.diagnostics import (
    OutOfMemoryError,
    gpu_stats,
    out_of_memory_error,
)
from mlsmith.training.progress import format_epoch
from mlsmith.training.trainer import Trainer

GREEDY_NET = '''
import torch
from torch import nn


class GreedyNet(nn.Module):
    """Asks torch for 32 TiB of activations at its 7th training forward pass."""

    def __init__(self, *, n_outputs, inputs, hidden=8):
        super().__init__()
        self.body = nn.Linear(inputs["numeric"] + len(inputs["categorical"]), n_outputs)
        self.calls = 0

    def forward(self, numeric, categorical):
        if self.training:
            self.calls += 1
            if self.calls == 7:
                torch.empty(2**45, dtype=torch.uint8)  # the CPU allocator says no
        return self.body(torch.cat([numeric, categorical.float()], dim=1))
'''


def test_the_host_running_out_in_a_real_process_is_a_diagnosis(tmp_path: Path) -> None:
    make_table("binary", rows=240).to_csv(tmp_path / "data.csv", index=False)
    (tmp_path / "greedy.py").write_text(GREEDY_NET)
    config = config_dict(
        tmp_path / "data.csv",
        tmp_path / "runs",
        train={"epochs": 3, "batch_size": 32, "preflight": False},
    )
    config["model"] = {"type": "custom", "module": f"{tmp_path / 'greedy.py'}:GreedyNet"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "mlsmith", "train", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    message = " ".join(done.stderr.split())
    # 240 rows: 168 train, 6 steps an epoch; the 7th forward is epoch 2's first step.
    assert "the host's memory (RAM) ran out of memory in epoch 2, step 7 (" in message
    assert "MB at the peak of" in message
    assert "DefaultCPUAllocator: can't allocate memory" in message
    assert "lower train.batch_size (now 32) and raise train.grad_accum_steps (now 1)" in message
    assert "data.stream=true" in message
    [run_dir] = list((tmp_path / "runs" / "t").iterdir())
    assert (run_dir / "checkpoints" / "last.pt").is_file()  # epoch 1's, intact
    assert yaml.safe_load((run_dir / "run.json").read_text())["status"] == "failed"


class _HostFull:
    """Python's own MemoryError, from a real allocation no machine can satisfy."""

    def on_train_step_end(self, trainer: Trainer) -> None:
        if trainer.global_step == 2:
            bytearray(2**62)


def test_a_python_memory_error_is_the_same_diagnosis(tmp_path: Path) -> None:
    x, y = regression_data(64)
    config = train_config(epochs=2, batch_size=8, gradient_checkpointing=False)
    trainer = Trainer(config, checkpoint_dir=tmp_path, callbacks=[_HostFull()])
    with pytest.raises(OutOfMemoryError) as caught:
        trainer.fit(make_net(), batches(x, y, 8), batches(x, y, 16), RegressionTask(0.0, 1.0))
    message = str(caught.value)
    assert message.startswith("the host's memory (RAM) ran out of memory in epoch 1, step 3 (")
    assert isinstance(caught.value.__cause__, MemoryError)


def test_what_counts_as_running_out_of_memory() -> None:
    assert out_of_memory_error(MemoryError())
    assert out_of_memory_error(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    try:
        torch.empty(2**45, dtype=torch.uint8)
    except RuntimeError as real:
        assert out_of_memory_error(real)
    assert not out_of_memory_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not out_of_memory_error(ValueError("can't allocate memory"))


def test_gpu_figures_appear_in_the_epoch_line_only_on_cuda() -> None:
    assert gpu_stats(torch.device("cpu")) == {}
    row = {"epoch": 1, "samples_per_s": 1000.0, "epoch_time_s": 1.0, "memory_mb": 900.0}
    assert "GPU" not in format_epoch(row, 3)
    line = format_epoch({**row, "gpu_util_pct": 87.0, "gpu_memory_reserved_mb": 2048.0}, 3)
    assert "900 MB  GPU 87%" in line
