"""Tables larger than memory: ``data.stream: true`` against the in-memory path on one file.

Writes a synthetic table (numeric and categorical columns, a non-linear binary target) as CSV
and Parquet, then trains the same MLP config on it in separate processes: in memory, and
streamed from each format. Each run is a fresh ``mlsmith train`` process, so its peak resident
memory (``ru_maxrss`` of the child) is its own. The table shows peak memory, training samples/s
(the mean over epochs of ``samples_per_s``), wall time and test accuracy; the streamed runs'
memory should stay flat as the file grows while the in-memory run's grows with it.

    python bench/stream.py                      # 1,000,000 rows, 2 epochs
    python bench/stream.py --rows 3000000 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml


def make_table(rows: int, seed: int = 0) -> pd.DataFrame:
    """16 numeric and 2 categorical features with a non-linear signal and 2% missing values."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 16)).astype(np.float32)
    city = rng.integers(0, 50, size=rows)
    kind = rng.integers(0, 5, size=rows)
    logit = (
        x[:, :6].sum(1)
        - 1.5 * x[:, 6] * x[:, 7]
        + np.sin(2 * x[:, 8])
        + 0.04 * (city % 7)
        - kind * 0.2
    )
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(16)])
    frame.loc[rng.random(rows) < 0.02, "x3"] = np.nan
    frame["city"] = [f"c{c}" for c in city]
    frame["kind"] = [f"k{k}" for k in kind]
    frame["label"] = (logit + rng.normal(scale=0.7, size=rows) > 0).astype(int)
    return frame


def run(path: Path, work: Path, name: str, stream: bool, epochs: int) -> dict[str, float]:
    config = {
        "experiment": name,
        "seed": 0,
        "output_dir": str(work / "runs"),
        "data": {"path": str(path), "target": "label", "split": {"stratify": False}},
        "model": {"type": "mlp"},
        "train": {"epochs": epochs, "batch_size": 512, "preflight": False},
        "track": {"enabled": False},
        "eval": {"report": False, "baseline": False, "bootstrap": 100, "importance_repeats": 0},
        "export": {"package": False},
    }
    if stream:
        config["data"] |= {"stream": True, "chunk_rows": 100_000, "num_workers": 2}
    file = work / f"{name}.yaml"
    file.write_text(yaml.safe_dump(config))
    log = work / f"{name}.log"
    started = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "mlsmith", "train", str(file)], stdout=out, stderr=out
        )
        # wait4: this child's own resource usage, its peak resident memory included.
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"{name} failed:\n{log.read_text()[-3000:]}")
    [run_dir] = list((work / "runs" / name).iterdir())
    history = pd.read_csv(run_dir / "history.csv")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "peak_mb": usage.ru_maxrss / 1024,  # Linux: KiB
        "samples_per_s": float(history["samples_per_s"].mean()),
        "wall_s": wall,
        "accuracy": float(metrics["test"]["accuracy"]["value"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        frame = make_table(args.rows)
        csv, parquet = work / "table.csv", work / "table.parquet"
        frame.to_csv(csv, index=False)
        frame.to_parquet(parquet, row_group_size=100_000)
        size = csv.stat().st_size / 2**20
        del frame
        results = {
            "stream, Parquet": run(parquet, work, "stream_parquet", True, args.epochs),
            "stream, CSV": run(csv, work, "stream_csv", True, args.epochs),
            "in memory, CSV": run(csv, work, "memory_csv", False, args.epochs),
        }
    print(
        f"\n{args.rows:,} rows x 19 columns (CSV {size:,.0f} MB), MLP, batch 512, "
        f"{args.epochs} epochs"
    )
    print("| path | peak RSS (MB) | samples/s | wall (s) | test accuracy |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['peak_mb']:,.0f} | {r['samples_per_s']:,.0f} | {r['wall_s']:.0f} | "
            f"{r['accuracy']:.4f} |"
        )


if __name__ == "__main__":
    main()
