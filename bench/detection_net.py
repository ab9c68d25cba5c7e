"""Which detector learns the generated shapes from scratch on a CPU, and how fast.

Scenes come from :func:`mlsmith.data.shapes.draw_scene` (what ``write_shapes`` writes: circles,
squares and triangles, 10-28 pixels, on noisy backgrounds): ``--train`` scenes from seed 0 to
train on, ``--test`` held-out scenes from seed 1 to measure on. Images are normalised with the
training scenes' per-channel mean and standard deviation, as mlsmith's batches are.

Each configuration (every ``--arch`` x ``--backbone``) trains a :class:`DetectionNet` with a plain
loop: AdamW (or SGD with momentum 0.9), a linear warm-up over the first epoch then a cosine decay
to zero, gradient norm clipped at 10, optional horizontal flips. Every ``--eval-every`` epochs the
clock stops and the held-out scenes are scored with :func:`mlsmith.vision_metrics.
detection_metrics` (pycocotools' AP); ``to_0.8_s`` is the training time when mAP@0.5 first
reached 0.8 (``-`` if never). The machine's load average (``uptime``) is printed with the table:
on a shared machine the seconds mean little without it. There, run with
``OMP_WAIT_POLICY=PASSIVE``: OpenMP's threads otherwise spin while they wait for a core, and
with more threads than cores an epoch took 2.5 times as long (81 s against 32 s, batch 16, at a
load of 4-5).

    OMP_WAIT_POLICY=PASSIVE python bench/detection_net.py     # the recommended default: FCOS
    OMP_WAIT_POLICY=PASSIVE python bench/detection_net.py --arch fcos retinanet fasterrcnn
    # torchvision's backbones: 2 epochs take about as long as 5 of the small one
    OMP_WAIT_POLICY=PASSIVE python bench/detection_net.py --backbone mobilenet_v3_large --epochs 2

Figures (2 shared cores, load average 3-5.5 from other jobs, OMP_WAIT_POLICY=PASSIVE, 1000
training scenes of 64 x 64, 200 held-out, batch 8, AdamW lr 3e-3 wd 1e-4, FPN 32 wide):

    arch        backbone            epochs  s/epoch  seconds  to_0.8_s  map_50  map_50_95
    fcos        small                    5     33.9      185       154   0.930      0.754
    fcos        small (seed 1)           5     39.0      186       147   0.887      0.709
    fcos        small (batch 16)         5     32.0      180         -   0.699      0.495
    retinanet   small                    5     43.2      223         -   0.762      0.566
    fasterrcnn  small               3 of 5    122        364         -   0.743      0.531
    fcos        mobilenet_v3_large       2    161        322         -   0.633      0.403
    fcos        resnet18                 2    142        283         -   0.692      0.536
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from mlsmith.data.shapes import CLASSES, Scene, draw_scene
from mlsmith.models.detection import DetectionNet, unpack_detections
from mlsmith.vision_metrics import Boxes, detection_metrics


@dataclass
class Split:
    """Scenes as tensors: images (N, 3, H, W) float normalised, boxes (N, M, 5) padded."""

    images: torch.Tensor
    boxes: torch.Tensor
    truths: list[Boxes]


def scenes(n: int, size: int, seed: int) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [draw_scene(rng, size) for _ in range(n)]


def to_split(drawn: list[Scene], mean: torch.Tensor, std: torch.Tensor) -> Split:
    images = torch.from_numpy(np.stack([s.image for s in drawn])).permute(0, 3, 1, 2).float()
    most = max(len(s.labels) for s in drawn)
    boxes = torch.zeros(len(drawn), most, 5)
    for i, s in enumerate(drawn):
        boxes[i, : len(s.labels), :4] = torch.from_numpy(s.boxes)
        boxes[i, : len(s.labels), 4] = torch.from_numpy(s.labels).float()
    truths = [Boxes(s.boxes, s.labels) for s in drawn]
    return Split((images - mean) / std, boxes, truths)


def hflip(
    images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Flip the images where ``flip`` is set, their boxes with them (padding rows stay zero)."""
    width = images.shape[-1]
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    flipped = boxes.clone()
    flipped[..., 0], flipped[..., 2] = width - boxes[..., 2], width - boxes[..., 0]
    real = (boxes[..., 4] > 0) & flip[:, None]
    return images, torch.where(real[..., None], flipped, boxes)


def evaluate(net: DetectionNet, split: Split, batch: int = 64) -> dict[str, float]:
    net.eval()
    predictions: list[Boxes] = []
    with torch.no_grad():
        for start in range(0, len(split.images), batch):
            for found in unpack_detections(net(split.images[start : start + batch])):
                predictions.append(
                    Boxes(found["boxes"].numpy(), found["labels"].numpy(), found["scores"].numpy())
                )
    net.train()
    metrics = detection_metrics(split.truths, predictions, CLASSES, resamples=0)
    return {key: float(metrics[key]["value"] or 0.0) for key in ("map_50", "map_50_95")}


def train_one(
    args: argparse.Namespace, arch: str, backbone: str, train: Split, test: Split
) -> dict[str, object]:
    torch.manual_seed(args.seed)
    net = DetectionNet(
        arch,
        backbone,
        len(CLASSES),
        (args.size, args.size),
        3,
        fpn_channels=args.fpn_channels,
        head_convs=args.head_convs,
    )
    net.train()
    if args.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            net.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(train.images) / args.batch)
    total = steps_per_epoch * args.epochs

    def factor(step: int) -> float:
        if step < steps_per_epoch:  # warm-up: one epoch, linear
            return (step + 1) / steps_per_epoch
        return 0.5 * (
            1 + math.cos(math.pi * (step - steps_per_epoch) / max(1, total - steps_per_epoch))
        )

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    generator = torch.Generator().manual_seed(args.seed)
    seconds, reached, epoch_seconds = 0.0, None, []
    metrics = {"map_50": 0.0, "map_50_95": 0.0}
    curve = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        order = torch.randperm(len(train.images), generator=generator)
        for first in range(0, len(order), args.batch):
            index = order[first : first + args.batch]
            images, boxes = train.images[index], train.boxes[index]
            if args.hflip:
                images, boxes = hflip(
                    images, boxes, torch.rand(len(index), generator=generator) < 0.5
                )
            loss = net(images, boxes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
            optimizer.step()
            schedule.step()
        epoch_seconds.append(time.perf_counter() - start)
        seconds += epoch_seconds[-1]
        if epoch % args.eval_every == 0 or epoch == args.epochs:
            metrics = evaluate(net, test)
            curve.append(f"{epoch}:{metrics['map_50']:.2f}")
            if reached is None and metrics["map_50"] >= 0.8:
                reached = seconds
            if args.verbose:
                print(
                    f"  {arch}/{backbone} epoch {epoch} {seconds:.0f}s loss {loss.item():.3f} "
                    f"map_50 {metrics['map_50']:.3f} map_50_95 {metrics['map_50_95']:.3f} "
                    f"load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
    return {
        "arch": arch,
        "backbone": backbone,
        "epochs": args.epochs,
        "s_per_epoch": float(np.median(epoch_seconds)),
        "seconds": seconds,
        "to_0.8_s": reached,
        **metrics,
        "curve": " ".join(curve),
        "load": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--arch", nargs="+", default=["fcos"], choices=["fasterrcnn", "retinanet", "fcos"]
    )
    parser.add_argument("--backbone", nargs="+", default=["small"])
    parser.add_argument("--size", type=int, default=64, help="image side (pixels)")
    parser.add_argument("--train", type=int, default=1000, help="training scenes (seed 0)")
    parser.add_argument("--test", type=int, default=200, help="held-out scenes (seed 1)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    parser.add_argument("--fpn-channels", type=int, default=32)
    parser.add_argument("--head-convs", type=int, default=2)
    parser.add_argument("--hflip", action="store_true", help="random horizontal flips")
    parser.add_argument("--eval-every", type=int, default=1, help="epochs between evaluations")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    drawn = scenes(args.train, args.size, seed=0)
    pixels = torch.from_numpy(np.stack([s.image for s in drawn])).float()
    mean, std = pixels.mean((0, 1, 2))[:, None, None], pixels.std((0, 1, 2))[:, None, None]
    train = to_split(drawn, mean, std)
    test = to_split(scenes(args.test, args.size, seed=1), mean, std)

    print(
        f"load before: {os.getloadavg()} | size {args.size} train {args.train} test {args.test} "
        f"batch {args.batch} lr {args.lr} {args.optimizer} wd {args.weight_decay} "
        f"fpn {args.fpn_channels} head_convs {args.head_convs} hflip {args.hflip} "
        f"threads {args.threads} OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', '-')} "
        f"torch {torch.__version__}"
    )
    rows = []
    for arch in args.arch:
        for backbone in args.backbone:
            rows.append(train_one(args, arch, backbone, train, test))
    print(
        f"{'arch':<11}{'backbone':<20}{'epochs':>7}{'s/epoch':>9}{'seconds':>9}{'to_0.8_s':>9}"
        f"{'map_50':>8}{'map_50_95':>10}{'load':>6}  curve (epoch:map_50)"
    )
    for r in rows:
        reached = "-" if r["to_0.8_s"] is None else f"{r['to_0.8_s']:.0f}"
        print(
            f"{r['arch']:<11}{r['backbone']:<20}{r['epochs']:>7}{r['s_per_epoch']:>9.1f}"
            f"{r['seconds']:>9.0f}{reached:>9}{r['map_50']:>8.3f}{r['map_50_95']:>10.3f}"
            f"{r['load']:>6.2f}  {r['curve']}"
        )


if __name__ == "__main__":
    main()
