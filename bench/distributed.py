"""Data-parallel training on one machine: 2 processes x 1 thread against 1 process x 2 threads.

Both sides train the same MLP on the same generated table through ``mlsmith train`` (the real
pipeline: the two-process side is ``train.distributed.nproc=2``, torchrun over gloo, with DDP
and with FSDP), at more than one model size, and read the training throughput (samples/s
over every rank) from each run's history.csv. A second table times what DDP adds per step:
an all-reduce of a buffer the size of each model's gradients between two gloo processes.

On a 2-core machine this shows the cost of the machinery more than any speed-up: the two
processes share the two cores that the one process uses as two threads.

    python bench/distributed.py [--rows 20000] [--epochs 3] [--sizes 256,256 1024,1024]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import yaml


def _table(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 32)).astype(np.float32)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(32)])
    frame["label"] = (x[:, :4].sum(axis=1) + rng.normal(scale=0.5, size=rows) > 0).astype(int)
    frame.to_csv(path, index=False)


def _config(folder: Path, data: Path, hidden: list[int], epochs: int) -> Path:
    config = {
        "experiment": "bench",
        "seed": 0,
        "output_dir": str(folder / "runs"),
        "data": {"path": str(data), "target": "label"},
        "model": {"type": "mlp", "hidden": hidden, "dropout": 0.0},
        "train": {
            "epochs": epochs,
            "batch_size": 128,
            "preflight": False,
            "early_stopping": {"enabled": False},
        },
        "track": {"enabled": False},
        "eval": {"report": False, "baseline": False, "bootstrap": 10},
        "export": {"package": False},
    }
    path = folder / f"config-{'-'.join(map(str, hidden))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _throughput(config: Path, nproc: int, threads: int, strategy: str = "ddp") -> float:
    """Median samples/s over the epochs after the first (which includes warm-up)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "mlsmith", "train", str(config), "--no-progress"]
    command += [f"train.distributed.nproc={nproc}", f"train.distributed.strategy={strategy}"]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    run = Path(result.stdout.strip().splitlines()[-1])
    with (run / "history.csv").open() as handle:
        rates = [float(row["samples_per_s"]) for row in csv.DictReader(handle)]
    return float(np.median(rates[1:] if len(rates) > 1 else rates))


def _allreduce_worker(numels: list[int], repeats: int) -> None:
    """Under torchrun: time an all-reduce of each size; rank 0 prints 'numel seconds'."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    for numel in numels:
        buffer = torch.ones(numel)
        for _ in range(5):
            dist.all_reduce(buffer)
        times = []
        for _ in range(repeats):
            dist.barrier()
            started = time.perf_counter()
            dist.all_reduce(buffer)
            times.append(time.perf_counter() - started)
        if dist.get_rank() == 0:
            print(numel, float(np.median(times)), flush=True)
    dist.destroy_process_group()


def _params(hidden: list[int], inputs: int = 32, outputs: int = 1) -> int:
    sizes = [inputs, *hidden, outputs]
    return sum(a * b + b for a, b in pairwise(sizes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", default=["256,256", "1024,1024"])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--allreduce", nargs="*", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.allreduce is not None:  # the torchrun worker side
        _allreduce_worker(args.allreduce, args.repeats)
        return

    sizes = [[int(v) for v in size.split(",")] for size in args.sizes]
    with tempfile.TemporaryDirectory(prefix="mlsmith-bench-ddp-") as name:
        folder = Path(name)
        data = folder / "table.csv"
        _table(data, args.rows)
        print(f"{args.rows} rows x 32 features, batch 128 per process, {args.epochs} epochs")
        header = f"{'model':>12} {'1 proc x 2 thr':>15} {'2 x 1 DDP':>13} {'ratio':>6}"
        print(header + f" {'2 x 1 FSDP':>13} {'ratio':>6}")
        for hidden in sizes:
            config = _config(folder, data, hidden, args.epochs)
            one = _throughput(config, 1, 2)
            ddp = _throughput(config, 2, 1, "ddp")
            fsdp = _throughput(config, 2, 1, "fsdp")
            label = "-".join(map(str, hidden))
            print(
                f"{label:>12} {one:>13,.0f}/s {ddp:>11,.0f}/s {ddp / one:>6.2f}"
                f" {fsdp:>11,.0f}/s {fsdp / one:>6.2f}"
            )

    numels = [_params(hidden) for hidden in sizes]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node=2", __file__, "--repeats", str(args.repeats), "--allreduce"]
    result = subprocess.run(
        command + [str(n) for n in numels],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    print("\nper-step gradient all-reduce, 2 gloo processes (median):")
    print(f"{'model':>12} {'parameters':>11} {'all-reduce':>11}")
    for hidden, line in zip(sizes, result.stdout.split("\n"), strict=False):
        numel, seconds = line.split()
        print(f"{'-'.join(map(str, hidden)):>12} {int(numel):>11,} {float(seconds) * 1e3:>9.2f}ms")


if __name__ == "__main__":
    main()
