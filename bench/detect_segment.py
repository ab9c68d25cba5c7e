"""Detection and segmentation from scratch on the generated shapes, with mlsmith's defaults.

The issue's quality bar: on 2 CPU cores, detection reaches mAP@0.5 >= 0.8 and segmentation
mIoU >= 0.8 within a few minutes. Each task is one ``mlsmith.train`` run on the same generated
scenes (circles, squares and triangles on noisy backgrounds, ``mlsmith.data.shapes``), scored
on its held-out test split; the table gives the figure with its 95% interval over test images,
the wall time of the whole run and the training time. A second table times prediction on the
test images with the run's torch model (``run.predict``) and with its package (ONNX Runtime,
decoding the files itself, as ``mlsmith serve`` does), and says how far the package agrees.

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
# Generated scenes per task (70% train, 15% validation, 15% test).
IMAGES = {"segmentation": 860, "detection": 1400}


def config(task: str, shapes: Path, output: Path) -> dict[str, Any]:
    data: dict[str, Any] = {"type": task, "path": str(shapes / "images")}
    if task == "segmentation":
        data |= {
            "masks": str(shapes / "masks"),
            "classes": ["background", "circle", "square", "triangle"],
        }
    else:
        data["annotations"] = str(shapes / "annotations.json")
    # What the defaults leave open: the schedule, how long to train and the UNet's size (chosen
    # with bench/detection_net.py for detection, a plain-loop search for the UNet).
    model: dict[str, Any] = {}
    if task == "detection":
        train: dict[str, Any] = {"epochs": 5, "scheduler": {"name": "cosine", "warmup_epochs": 1}}
    else:
        train = {"epochs": 20, "optimizer": {"lr": 3e-3}, "scheduler": {"name": "onecycle"}}
        model = {"widths": [8, 16, 32, 64]}
    return {
        "experiment": f"bench-{task}",
        "output_dir": str(output),
        "data": data,
        "model": model,
        "train": train,
        "track": {"enabled": False},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["segmentation", "detection"])
    parser.add_argument("--images", type=int, help="generated scenes (default: per task)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], help="config overrides a.b=value")
    args = parser.parse_args()

    import torch

    import mlsmith
    from mlsmith.data.shapes import write_shapes

    print(f"torch threads: {torch.get_num_threads()}, CPUs: {os.cpu_count()}")
    rows = []
    served: list[tuple[Any, ...]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            count = args.images or IMAGES[task]
            shapes = write_shapes(Path(tmp) / task, count, size=args.size, seed=args.seed)
            metric, goal = GOALS[task]
            started = time.perf_counter()
            run = mlsmith.train(
                config(task, shapes, Path(tmp) / "runs"), list(args.set), progress=False
            )
            wall = time.perf_counter() - started
            served.append((task, *_prediction_speed(run, shapes)))
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
    print()
    print(f"{'task':<13} {'images':>6} {'torch img/s':>11} {'package img/s':>13} {'agreement':>22}")
    for task, images, torch_rate, package_rate, agreement in served:
        print(f"{task:<13} {images:>6} {torch_rate:>11.1f} {package_rate:>13.1f} {agreement:>22}")


def _prediction_speed(run: Any, shapes: Path) -> tuple[int, float, float, str]:
    """Images per second predicting 200 images from their files, torch vs the package, and how
    the package's answers compare with torch's."""

    import mlsmith
    from mlsmith.packaging.scenes import compare_boxes

    frame = run.preprocessor.read(str(shapes / "images")).tail(200).reset_index(drop=True)
    package = mlsmith.load_package(run.path)
    started = time.perf_counter()
    expected = run.predict(frame)
    torch_seconds = time.perf_counter() - started
    started = time.perf_counter()
    if run.config.data.type == "segmentation":
        masks = package.masks(frame)
        package_seconds = time.perf_counter() - started
        same = sum(int((m == e).sum()) for m, e in zip(masks, expected["mask"], strict=True))
        total = sum(int(e.size) for e in expected["mask"])
        agreement = f"pixels {same / total:.4%}"
    else:
        found = package.predict(frame)
        package_seconds = time.perf_counter() - started
        check = compare_boxes(found, expected, frame, tolerance=1e-3)
        agreement = (
            f"boxes {check['box_agreement']:.2%} of {check['boxes']}, "
            f"max {check['max_abs_diff']:.1e} px"
        )
    n = len(frame)
    return n, n / torch_seconds, n / package_seconds, agreement


if __name__ == "__main__":
    main()
