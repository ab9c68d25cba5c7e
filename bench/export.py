"""What a package costs and gains per model family: parity with torch, ONNX Runtime against
torch eager, and the int8 model against the float one.

Each family trains one small run on data shipped with mlsmith or scikit-learn (nothing is
downloaded) with its package on and, for networks, ``export.quantize: int8``. Every figure comes
from the run's ``export.json``, so it is what ``mlsmith train`` / ``mlsmith export`` measure on
every package: each format against the torch network on the check rows (the test split, at most
2,000 rows or 256 images), torch eager and ONNX Runtime timed side by side in one process on the
same batches (median of 20 calls at batch 1, of up to 3 at batch 1,024; the check rows repeated),
and the int8 model against the float ONNX model on the same rows and batches, with the paired
bootstrap interval of the headline metric's difference (int8 - float). Ratios, not times: above
1, ONNX Runtime (or int8) is faster.

    python bench/export.py                        # every family, about 5 minutes on 2 cores
    python bench/export.py --families mlp cnn     # a few
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import mlsmith

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"
# Packages read images from files: the MNIST digits are written out as PNGs in a class-per-folder
# directory (this placeholder's value), as bench/images.py does.
MNIST_PNGS = "<MNIST as PNG files>"
MNIST_IMAGES = 3_000

# family -> (what it trains on, data section, model section, train section)
FAMILIES: dict[str, tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "mlp": (
        "sklearn digits (1,797 x 64)",
        {"path": "sklearn:digits", "target": "target"},
        {"type": "mlp", "hidden": [256, 256], "dropout": 0.1},
        {"epochs": 15, "batch_size": 64},
    ),
    "cnn": (
        "MNIST 3k (PNG), 28x28",
        {"type": "image", "path": MNIST_PNGS},
        {"type": "cnn", "channels": [32, 64, 128], "depth": 2, "dropout": 0.2},
        {"epochs": 2, "batch_size": 64, "optimizer": {"lr": 0.003}},
    ),
    "torchvision": (
        "MNIST 3k (PNG), 28x28",
        {"type": "image", "path": MNIST_PNGS},
        {"type": "torchvision", "arch": "resnet18"},
        {"epochs": 1, "batch_size": 64},
    ),
    "bag": (
        "Rotten Tomatoes 6k",
        {
            "type": "text",
            "path": str(EXAMPLES / "rotten_tomatoes_6k.csv"),
            "target": "label",
            "text_column": "text",
            "tokenizer": {"vocab_size": 8000},
        },
        {"type": "bag", "dim": 16, "ngrams": 2, "buckets": 65536, "dropout": 0.5},
        {"epochs": 3, "batch_size": 64, "optimizer": {"lr": 0.01, "weight_decay": 0.0}},
    ),
    "transformer": (
        "Rotten Tomatoes 6k",
        {
            "type": "text",
            "path": str(EXAMPLES / "rotten_tomatoes_6k.csv"),
            "target": "label",
            "text_column": "text",
            "tokenizer": {"vocab_size": 8000},
            "max_length": 64,
        },
        {"type": "transformer", "dim": 64, "depth": 1, "heads": 4, "ff_mult": 2},
        {"epochs": 2, "batch_size": 32},
    ),
    "lightgbm": (
        "sklearn digits (1,797 x 64)",
        {"path": "sklearn:digits", "target": "target"},
        {"type": "lightgbm", "n_estimators": 200},
        {},
    ),
    "xgboost": (
        "sklearn digits (1,797 x 64)",
        {"path": "sklearn:digits", "target": "target"},
        {"type": "xgboost", "n_estimators": 200},
        {},
    ),
}
TREES = ("lightgbm", "xgboost")


def write_pngs(directory: Path, limit: int = MNIST_IMAGES) -> Path:
    """``limit`` of the MNIST digits of examples/data (a seeded sample) as PNG files, one folder
    per class."""
    import numpy as np
    from PIL import Image

    archive = np.load(EXAMPLES / "mnist_5k.npz")
    keep = np.sort(np.random.default_rng(0).permutation(len(archive["label"]))[:limit])
    images, labels = archive["images"][keep], archive["label"][keep]
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = directory / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    return directory


def config(family: str, output: Path, mnist: Path) -> dict[str, Any]:
    """A small run of ``family`` with its package (and, for networks, int8) on."""
    _, data, model, train = FAMILIES[family]
    if data["path"] == MNIST_PNGS:
        data = {**data, "path": str(mnist)}
    return {
        "experiment": f"bench-export-{family}",
        "seed": 0,
        "output_dir": str(output),
        "data": data,
        "model": model,
        "train": {**train, "preflight": False},
        "track": {"enabled": False},
        "eval": {"report": False},
        "export": {"package": True, "quantize": None if family in TREES else "int8"},
    }


def measure(family: str, output: Path, mnist: Path) -> dict[str, Any]:
    """Train ``family``'s run and return its export.json, with the wall times."""
    started = time.perf_counter()
    run = mlsmith.train(config(family, output, mnist), progress=False, epoch_lines=False)
    package = run.info.get("package") or {}
    if package.get("status") != "written":
        raise SystemExit(f"{family}: no package ({package.get('error')})")
    export = json.loads((run.path / "package" / "data" / "mlsmith" / "export.json").read_text())
    export["wall_s"] = time.perf_counter() - started
    export["train_s"] = run.info["train_seconds"]
    return export


def row(family: str, export: dict[str, Any]) -> list[str]:
    """One table row: parity, ORT vs torch, int8 vs float."""
    served = export["formats"].get("onnx") or next(iter(export["formats"].values()))
    latency = served.get("latency_ms", {})
    cells = [
        family,
        FAMILIES[family][0],
        str(export["rows_checked"]),
        f"{served['max_abs_diff']:.1e}",
        *[
            f"{latency[k]['speedup_vs_torch']:.2f}" if k in latency else "-"
            for k in ("batch_1", "batch_1024")
        ],
    ]
    quantized = export.get("quantized")
    if not quantized:
        return [*cells, "-", "-", "-", "-", "-", f"{export['wall_s']:.0f}"]
    speed = quantized["speed_ratio"]
    low, high = quantized["ci95"]
    return [
        *cells,
        quantized["method"],
        f"{quantized['size_ratio']:.2f}",
        f"{speed['batch_1']:.2f}",
        f"{speed['batch_1024']:.2f}",
        f"{quantized['metric']} {quantized['float_value']:.3f} -> {quantized['int8_value']:.3f}, "
        f"{quantized['difference']:+.3f} [{low:+.3f}, {high:+.3f}]",
        f"{export['wall_s']:.0f}",
    ]


def machine() -> str:
    """The torch threads, cores, CPU and the libraries the figures depend on."""
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        text = cpuinfo.read_text()
        names = [line.split(":", 1)[1] for line in text.splitlines() if "model name" in line]
        cpu = names[0].strip() if names else cpu
        # int8 speed depends on these: VNNI does 8-bit dot products in one instruction.
        wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
        flags = " (" + ", ".join(f for f in wanted if f" {f}" in text) + ")"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu}{flags}, {cores} cores, torch {torch.__version__.split('+')[0]} with "
        f"{torch.get_num_threads()} threads, onnxruntime {onnxruntime.__version__}, "
        f"Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("mlsmith").setLevel(logging.WARNING)
    # MLflow's hint that integer columns (digits' pixels) cannot hold missing values.
    warnings.filterwarnings("ignore", message="Hint: Inferred schema", category=UserWarning)
    print(f"machine: {machine()}", file=sys.stderr)
    header = [
        "family",
        "data",
        "check rows",
        "parity (max abs diff)",
        "ORT/torch b1",
        "ORT/torch b1024",
        "int8",
        "int8 size",
        "int8 speed b1",
        "int8 speed b1024",
        "int8 - float (95% CI)",
        "wall s",
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        mnist = Path(tmp) / "mnist"
        if any(FAMILIES[f][1]["path"] == MNIST_PNGS for f in args.families):
            write_pngs(mnist)
        for family in args.families:
            print(f"{family}: training and packaging...", file=sys.stderr, flush=True)
            rows.append(row(family, measure(family, Path(tmp), mnist)))
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
