"""Image input pipelines: mlsmith's in-memory uint8 cache vs a plain torchvision ImageFolder.

The MNIST 5k digits (examples/data/mnist_5k.npz) are written as PNG files into a temporary
class-per-folder directory. The same small CNN (examples/mnist.yaml's) is then trained from the
same initial weights, with the same batch size, optimizer (mlsmith's AdamW) and augmentation (the
example's small random shifts and rotations), by one plain training loop fed by:

* mlsmith cache: the PNGs decoded once into a uint8 tensor (N, 1, 28, 28); batches are slices,
  augmented per sample and normalised per batch in the main process;
* ImageFolder + DataLoader: torchvision's per-sample pipeline (PIL decode, v2 transforms, default
  collate) with 0 and with N worker processes, every epoch;
* mlsmith stream: mlsmith's own DataLoader path (workers decode and augment per sample).

Each pipeline trains ``--epochs`` epochs (the first is a warm-up: worker start, oneDNN kernel
selection) and the table shows images/s over the others; runs alternate and the median of
``--repeats`` is shown. The last column is the input pipeline alone (batches made, no model):
how much of the CPU it leaves to training.

    python bench/images.py                     # needs: pip install -e ".[vision]"
    python bench/images.py --epochs 3 --repeats 3 --workers 2
    python bench/images.py --no-augment        # decoding and batching alone

The last line reads ``ratio (mlsmith cache / best ImageFolder): X.XXx``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mlsmith.config import CNNConfig, OptimizerConfig, load_config
from mlsmith.data.batches import BatchOptions
from mlsmith.data.images import ImagePreprocessor, prepare
from mlsmith.models.cnn import SmallCNN
from mlsmith.training.optimizers import build_optimizer

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT / "examples" / "data" / "mnist_5k.npz"
SEED = 0
AUGMENT = {"rotation": 10.0, "translate": 0.1}  # examples/mnist.yaml's
CNN = CNNConfig(channels=[32, 64, 128], depth=2, dropout=0.2, channels_last=True)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def write_pngs(directory: Path, limit: int) -> Path:
    from PIL import Image

    archive = np.load(MNIST)
    keep = np.sort(np.random.default_rng(SEED).permutation(len(archive["label"]))[:limit])
    images, labels = archive["images"][keep], archive["label"][keep]
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = directory / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    return directory


def train_epochs(batches: Callable[[], Batches], epochs: int) -> tuple[float, int]:
    """Train a fresh CNN (same seed each time); images/s over every epoch but the first."""
    torch.manual_seed(SEED)
    model = SmallCNN(1, 10, CNN)
    optimizer = build_optimizer(model, OptimizerConfig(lr=3e-3))  # mlsmith's AdamW
    model.train()
    seconds, seen = 0.0, 0
    for epoch in range(epochs):
        started, count = time.perf_counter(), 0
        for images, target in batches():
            loss = F.cross_entropy(model(images), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            count += len(target)
        if epoch > 0:
            seconds += time.perf_counter() - started
            seen += count
    return seen / seconds, seen


def load_only(batches: Callable[[], Batches], epochs: int) -> float:
    """Images/s of the input pipeline alone (no model), over every epoch but the first."""
    seconds, seen = 0.0, 0
    for epoch in range(epochs):
        started, count = time.perf_counter(), 0
        for _, target in batches():
            count += len(target)
        if epoch > 0:
            seconds += time.perf_counter() - started
            seen += count
    return seen / seconds


def mlsmith_batches(
    pre: ImagePreprocessor, inputs: dict[str, np.ndarray], target: np.ndarray, batch_size: int
) -> Callable[[], Batches]:
    batches = pre.batches(
        inputs, target, BatchOptions(batch_size, shuffle=True, seed=SEED, train=True)
    )

    def epoch() -> Batches:
        for step in batches.steps(1):
            for batch_inputs, batch_target in step:
                yield batch_inputs["image"], batch_target

    return epoch


def image_folder_batches(
    folder: Path, mean: float, std: float, batch_size: int, workers: int, augment: bool
) -> Callable[[], Batches]:
    from torchvision import datasets
    from torchvision.transforms import v2

    shift = (AUGMENT["translate"], AUGMENT["translate"])
    random = [v2.RandomAffine(degrees=AUGMENT["rotation"], translate=shift)] if augment else []
    transform = v2.Compose(
        [
            v2.Grayscale(1),
            v2.ToImage(),
            *random,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([mean], [std]),
        ]
    )
    dataset = datasets.ImageFolder(str(folder), transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(SEED),
    )
    return lambda: iter(loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="MNIST images to use (<= 5000)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="per run; the first is a warm-up")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--no-augment", action="store_true", help="no augmentation: decoding and batching only"
    )
    args = parser.parse_args()
    augment = {} if args.no_augment else AUGMENT
    logging.getLogger("mlsmith").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_pngs(Path(tmp) / "mnist", args.images)
        config = load_config(
            {
                "data": {"type": "image", "path": str(folder), "augment": augment},
                "model": {"type": "cnn"},
            }
        )
        data = prepare(config)  # fits mean/std on its training split
        pre = data.preprocessor
        assert isinstance(pre, ImagePreprocessor)
        frame = pre.read(str(folder))
        target = pre.task.encode(frame["label"])
        started = time.perf_counter()
        cached = pre.transform(frame)  # every PNG decoded once into uint8 (N, 1, 28, 28)
        decode_s = time.perf_counter() - started
        state = pre.to_dict()
        state.update(kind=None, task=pre.task, cache="stream", num_workers=args.workers)
        del state["kind"]
        streamed = ImagePreprocessor(**state)  # the same fitted state, streaming
        streamed_inputs = streamed.transform(frame)
        mean, std = pre.mean[0], pre.std[0]

        pipelines: dict[str, tuple[str, Callable[[], Batches]]] = {
            "mlsmith in-memory cache": ("-", mlsmith_batches(pre, cached, target, args.batch_size)),
            "ImageFolder + DataLoader": (
                "0",
                image_folder_batches(folder, mean, std, args.batch_size, 0, bool(augment)),
            ),
            f"ImageFolder + DataLoader ({args.workers}w)": (
                str(args.workers),
                image_folder_batches(
                    folder, mean, std, args.batch_size, args.workers, bool(augment)
                ),
            ),
            "mlsmith stream (DataLoader)": (
                str(args.workers),
                mlsmith_batches(streamed, streamed_inputs, target, args.batch_size),
            ),
        }
        rates: dict[str, list[float]] = {name: [] for name in pipelines}
        loading: dict[str, list[float]] = {name: [] for name in pipelines}
        names = list(pipelines)
        for repeat in range(args.repeats):
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                rate, _ = train_epochs(pipelines[name][1], args.epochs)
                rates[name].append(rate)
                loading[name].append(load_only(pipelines[name][1], args.epochs))

    cache_rate = statistics.median(rates[names[0]])
    print(
        f"\n{len(frame)} MNIST PNGs, batch {args.batch_size}, CNN {CNN.channels} x{CNN.depth} "
        f"channels-last, augmentation {augment or 'none'}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}\n"
    )
    print(f"| {'pipeline':<34} | workers | training images/s | vs cache | input alone, images/s |")
    print(f"|{'-' * 36}|---------|-------------------|----------|-----------------------|")
    for name in names:
        rate = statistics.median(rates[name])
        alone = statistics.median(loading[name])
        workers = pipelines[name][0]
        print(
            f"| {name:<34} | {workers:>7} | {rate:>17,.0f} | {rate / cache_rate:>8.2f} "
            f"| {alone:>21,.0f} |"
        )
    print(
        f"\none-time decode into the cache: {decode_s:.2f} s for {len(frame)} PNGs "
        f"({len(frame) / decode_s:,.0f} images/s, {cached['image'].nbytes / 2**20:.1f} MiB)"
    )
    best = max(statistics.median(rates[n]) for n in names if n.startswith("ImageFolder"))
    print(f"ratio (mlsmith cache / best ImageFolder): {cache_rate / best:.2f}x")


if __name__ == "__main__":
    main()
