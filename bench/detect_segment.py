"""Detection and segmentation from scratch on the generated shapes, with mlsmith's defaults.

The issue's quality bar: on 2 CPU cores, detection reaches mAP@0.5 >= 0.8 and segmentation
mIoU >= 0.8 within a few minutes. Each task is one ``mlsmith.train`` run on the same generated
scenes (circles, squares and triangles on noisy backgrounds, ``mlsmith.data.shapes``), scored
on its held-out test split; the table gives the figure with its 95% interval over test images,
the wall time of the whole run and the training time.

    python bench/detect_segment.py                       # both tasks, the defaults
    python bench/detect_segment.py --tasks segmentation  # one task
    python bench/detect_segment.py --set train.epochs=10 # overrides for every run
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

GOALS = {"segmentation": ("miou", 0.8), "detection": ("map_50", 0.8)}


def config(task: str, shapes: Path, output: Path) -> dict[str, Any]:
    data: dict[str, Any] = {"type": task, "path": str(shapes / "images")}
    if task == "segmentation":
        data |= {
            "masks": str(shapes / "masks"),
            "classes": ["background", "circle", "square", "triangle"],
        }
    else:
        data["annotations"] = str(shapes / "annotations.json")
    return {
        "experiment": f"bench-{task}",
        "output_dir": str(output),
        "data": data,
        "track": {"enabled": False},
        "export": {"package": False},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["segmentation", "detection"])
    parser.add_argument("--images", type=int, default=600, help="generated scenes")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], help="config overrides a.b=value")
    args = parser.parse_args()

    import torch

    import mlsmith
    from mlsmith.data.shapes import write_shapes

    print(f"torch threads: {torch.get_num_threads()}, CPUs: {os.cpu_count()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        shapes = write_shapes(Path(tmp) / "shapes", args.images, size=args.size, seed=args.seed)
        for task in args.tasks:
            metric, goal = GOALS[task]
            started = time.perf_counter()
            run = mlsmith.train(
                config(task, shapes, Path(tmp) / "runs"), list(args.set), progress=False
            )
            wall = time.perf_counter() - started
            test = run.metrics["test"][metric]
            low, high = test.get("ci95") or (float("nan"), float("nan"))
            rows.append(
                (
                    task,
                    run.config.model.type,
                    metric,
                    test["value"],
                    low,
                    high,
                    run.info.get("epochs_run"),
                    run.info.get("train_seconds", float("nan")),
                    wall,
                    "yes" if test["value"] >= goal else "NO",
                )
            )
    print()
    print(
        f"{'task':<13} {'model':<11} {'metric':<7} {'test':>7} {'95% CI':>17} {'epochs':>6} "
        f"{'train s':>8} {'wall s':>7} {'goal':>5}"
    )
    for task, model, metric, value, low, high, epochs, train_s, wall, met in rows:
        print(
            f"{task:<13} {model:<11} {metric:<7} {value:>7.4f} [{low:.4f}, {high:.4f}] "
            f"{epochs:>6} {train_s:>8.1f} {wall:>7.1f} {met:>5}"
        )


if __name__ == "__main__":
    main()
