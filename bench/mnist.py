"""MNIST 5k: the example's small CNN (``mlsmith train examples/mnist.yaml``) vs an RBF SVM.

Both are scored on the same 1,000 test digits: the example's test split (20%, stratified,
seed 42), rebuilt by mlsmith itself. The SVM (scikit-learn ``SVC``, RBF kernel, default C and
gamma, on raw pixels scaled to [0, 1]) trains on the other 80%: the CNN's 3,500 training digits
plus the 500 it holds out for validation (and on the 3,500 alone, for a like-for-like row).
Accuracy intervals are mlsmith's 95% bootstrap intervals (1,000 resamples) for every row.

    python bench/mnist.py                  # needs: pip install -e ".[vision]"
    python bench/mnist.py --seed 1         # another split and initialisation

Training time for the CNN is the sum of its epochs (``history.csv``'s ``epoch_time_s``).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

import mlsmith
from mlsmith.config import load_config
from mlsmith.data.base import Split
from mlsmith.data.images import prepare
from mlsmith.evaluation import evaluate_outputs

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "mnist.yaml"


def accuracy(truth: np.ndarray, predicted: np.ndarray, classes: int, seed: int) -> str:
    one_hot = np.eye(classes)[predicted]
    result = evaluate_outputs("multiclass", truth, one_hot, n_resamples=1000, seed=seed)
    low, high = result["accuracy"]["ci95"]  # type: ignore[misc]
    return f"{result['accuracy']['value']:.4f} [{low:.4f}, {high:.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="default: the example's")
    args = parser.parse_args()
    overrides = ["track.enabled=false"] + ([f"seed={args.seed}"] if args.seed is not None else [])
    logging.getLogger("mlsmith").setLevel(logging.WARNING)
    rows = []

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        run = mlsmith.train(CONFIG, [*overrides, f"output_dir={tmp}"], progress=False)
        wall = time.perf_counter() - started
        test = run.metrics["test"]["accuracy"]
        train_s = float(run.history["epoch_time_s"].sum())
        rows.append(
            (
                "small CNN (examples/mnist.yaml)",
                run.info["data"]["rows"]["train"],
                f"{test['value']:.4f} [{test['ci95'][0]:.4f}, {test['ci95'][1]:.4f}]",
                f"{train_s:.1f} s ({len(run.history)} epochs; {wall:.0f} s wall)",
            )
        )
        seed = run.config.seed

    from sklearn.svm import SVC

    data = prepare(load_config(CONFIG, overrides))
    assert data.test is not None

    def pixels(split: Split) -> np.ndarray:
        return split.inputs["image"].reshape(len(split), -1).astype(np.float32) / 255.0

    test_x, test_y = pixels(data.test), data.test.target
    classes = len(data.task.classes)
    for name, parts in (
        ("RBF SVM, train + val (80%)", (data.train, data.val)),
        ("RBF SVM, train only", (data.train,)),
    ):
        x = np.concatenate([pixels(p) for p in parts])
        y = np.concatenate([p.target for p in parts])
        started = time.perf_counter()
        svm = SVC(kernel="rbf").fit(x, y)
        fit_s = time.perf_counter() - started
        predicted = svm.predict(test_x)
        rows.append((name, len(x), accuracy(test_y, predicted, classes, seed), f"{fit_s:.1f} s"))

    print(f"\nMNIST 5k, test split: {len(test_y)} digits (seed {seed})\n")
    print(f"| {'model':<32} | train rows | test accuracy [95% CI]   | training time")
    print(f"|{'-' * 34}|------------|--------------------------|--------------")
    for name, n, acc, seconds in rows:
        print(f"| {name:<32} | {n:>10,} | {acc:<24} | {seconds}")


if __name__ == "__main__":
    main()
