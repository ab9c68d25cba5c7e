"""`mlsmith predict --engine spark` (local mode) vs the local engine on the same table.

Generates a table (numeric and categorical columns, some missing values, an id), trains a small
MLP on a sample of it for a few epochs (package on), then predicts the whole table:

- local, CLI: `mlsmith predict RUN -i TABLE -o out.parquet --keep id` in a new process: the
  run's torch model, `--chunk-rows` rows at a time (the default engine);
- spark, CLI: the same with `--engine spark --spark-master MASTER`: the run's package (ONNX
  Runtime) over the table's partitions with mapInPandas, Parquet part files out; the time
  includes starting Python, the JVM and the Spark session, as a user running it pays;
- local, in process: `mlsmith.predict(run, table, out.parquet)` called again in this process
  (torch imported, the model loaded once per call), the baseline for:
- spark, session up: `mlsmith.predict(..., engine="spark")` in a Spark session already running
  in this process: the job alone (what a notebook or a long-lived program pays per table; the
  second of two jobs, the first also warming up the JVM).

Each engine reads the same Parquet file (row groups of 100,000 rows, so Spark can split it) and
the same CSV, keeps the id, and the outputs are compared row by row (by id): max |difference| of
the probabilities and whether every label agrees. Rows/s = input rows / wall seconds.

    pip install -e ".[spark]"      # and Java 17 or 21
    python bench/spark_predict.py                       # 2,000,000 rows, local[2]
    python bench/spark_predict.py --rows 1000000 --master "local[4]" --formats parquet

Executors run `--executor-python` (default: this interpreter; any Python with the package's
requirements.txt and pyarrow will do, see tests/spark/).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import mlsmith


def make_table(rows: int, seed: int) -> pd.DataFrame:
    """A learnable binary table: 6 numeric columns (5% missing in one), 2 categorical."""
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(rows, 6))
    color = rng.choice(np.array(["red", "green", "blue", "grey"]), size=rows)
    zone = rng.integers(1, 20, size=rows)
    signal = numeric[:, 0] - 0.5 * numeric[:, 1] + np.where(color == "red", 1.0, 0.0) + zone / 20
    frame = pd.DataFrame(numeric, columns=[f"x{i}" for i in range(6)])
    frame.loc[rng.random(rows) < 0.05, "x2"] = np.nan
    frame.insert(0, "id", np.arange(rows, dtype=np.int64))
    frame["color"] = color
    frame["zone"] = zone
    frame["label"] = np.where(signal + rng.normal(scale=0.5, size=rows) > 0.5, "yes", "no")
    return frame


def train(root: Path, sample: pd.DataFrame, epochs: int) -> mlsmith.Run:
    sample.drop(columns="id").to_csv(root / "train.csv", index=False)
    config: dict[str, Any] = {
        "experiment": "bench-spark",
        "seed": 0,
        "output_dir": str(root / "runs"),
        "data": {
            "path": str(root / "train.csv"),
            "target": "label",
            "categorical": ["color", "zone"],
        },
        "model": {"type": "mlp", "hidden": [64, 64]},
        "train": {"epochs": epochs, "batch_size": 256},
        "track": {"enabled": False},
        "eval": {"report": False, "baseline": False, "bootstrap": 200},
        "export": {"package": True},
    }
    return mlsmith.train(config, progress=False, epoch_lines=False)


def compare(spark_dir: Path, local_file: Path) -> tuple[float, bool]:
    """Max |probability difference| and whether every label agrees, row by row by id."""
    got = pd.read_parquet(spark_dir).sort_values("id").reset_index(drop=True)
    expected = pd.read_parquet(local_file).sort_values("id").reset_index(drop=True)
    assert (got["id"].to_numpy() == expected["id"].to_numpy()).all(), "different rows"
    probabilities = [c for c in expected.columns if c.startswith("proba_")]
    diff = float(np.abs(got[probabilities].to_numpy() - expected[probabilities].to_numpy()).max())
    return diff, bool((got["prediction"] == expected["prediction"]).all())


def timed_cli(*args: str | Path) -> float:
    """``mlsmith predict ARGS`` as a user runs it, in a new process: wall seconds."""
    command = [sys.executable, "-m", "mlsmith", "predict", *(str(a) for a in args)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return seconds


def timed_predict(*args: Any, **kwargs: Any) -> float:
    """``mlsmith.predict(*args, **kwargs)`` in this process: wall seconds."""
    started = time.perf_counter()
    mlsmith.predict(*args, **kwargs)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--train-rows", type=int, default=5_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--formats", nargs="+", default=["parquet", "csv"])
    parser.add_argument("--executor-python", default=sys.executable)
    args = parser.parse_args()
    os.environ["PYSPARK_PYTHON"] = args.executor_python
    # pyspark 4 warns when the bench's own session starts that it does not "fully" support
    # pandas 3 (mlsmith's Spark engine silences it the same way; the parity column checks).
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    logging.getLogger("mlsmith").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench-spark-") as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        table = make_table(args.rows, seed=0)
        inputs = {"parquet": root / "table.parquet", "csv": root / "table.csv"}
        features = table.drop(columns="label")
        for fmt in args.formats:
            if fmt == "parquet":
                features.to_parquet(inputs[fmt], row_group_size=100_000)
            else:
                features.to_csv(inputs[fmt], index=False)
        print(f"table: {args.rows:,} rows x {features.shape[1]} columns "
              f"({time.perf_counter() - started:.1f} s to write)", flush=True)  # fmt: skip
        run = train(root, make_table(args.train_rows, seed=1), args.epochs)
        print(f"run: {run.path.name}, MLP 64-64 trained on {args.train_rows:,} rows", flush=True)

        results = []
        for fmt in args.formats:
            source = inputs[fmt]
            local = root / f"local-{fmt}.parquet"
            common = ("--keep", "id", "--chunk-rows", args.chunk_rows)
            seconds = timed_cli(run.path, "-i", source, "-o", local, *common)
            results.append((fmt, "local, CLI", seconds, None))
            print(f"  {fmt} local: {seconds:.1f} s", flush=True)
            out = root / f"spark-{fmt}"
            spark = ("--engine", "spark", "--spark-master", args.master)
            seconds = timed_cli(run.path, "-i", source, "-o", out, *common, *spark)
            results.append((fmt, f"spark {args.master}, CLI", seconds, compare(out, local)))
            print(f"  {fmt} spark, CLI: {seconds:.1f} s", flush=True)

            for _ in range(2):  # the second of two, as for Spark below
                seconds = timed_predict(
                    run, source, local, chunk_rows=args.chunk_rows, keep_columns=["id"]
                )
            results.append((fmt, "local, in process", seconds, None))
            print(f"  {fmt} local, in process: {seconds:.1f} s", flush=True)

            from pyspark.sql import SparkSession

            session = SparkSession.builder.master(args.master).appName("bench").getOrCreate()
            try:
                # The same job in a session already running: what a program pays per job. The
                # second of two: the first also warms up the JVM's just-in-time compiler.
                for _ in range(2):
                    seconds = timed_predict(
                        run, source, out, engine="spark", chunk_rows=args.chunk_rows,
                        keep_columns=["id"],
                    )  # fmt: skip
            finally:
                session.stop()
            results.append((fmt, f"spark {args.master}, session up", seconds, compare(out, local)))
            print(f"  {fmt} spark, session up: {seconds:.1f} s", flush=True)

    print()
    print("| input | engine | rows | seconds | rows/s | vs local | max abs diff, labels |")
    print("|---|---|---:|---:|---:|---:|---|")
    for fmt, engine, seconds, parity in results:
        # CLI against CLI, in process against in process.
        kind = engine.split(", ")[1] == "CLI"
        base = next(
            s for f, e, s, _ in results if f == fmt and e.startswith("local") and
            (e.split(", ")[1] == "CLI") == kind
        )  # fmt: skip
        same = "" if parity is None else f"{parity[0]:.1e}, {'equal' if parity[1] else 'DIFFER'}"
        print(f"| {fmt} | {engine} | {args.rows:,} | {seconds:.1f} | {args.rows / seconds:,.0f} | "
              f"{base / seconds:.2f}x | {same} |")  # fmt: skip


if __name__ == "__main__":
    main()
