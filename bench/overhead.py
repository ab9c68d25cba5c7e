"""Training-loop overhead: a minimal hand-written PyTorch loop vs the mlsmith Trainer vs Lightning.

All three train the same MLP (mlsmith's TabularMLP) from the same initial weights on the same
batches in the same order, with the same optimizer (AdamW, no decay on biases), and validate
once per epoch. The raw loop and the Trainer must end with the same weights (allclose; in
practice bit-identical), which proves the Trainer adds nothing to the maths. Two things separate
their throughput: the Trainer's loop overhead (its diagnostics, checkpoints, metrics), and on the
CPU its flat buffers (training/flat.py: the optimizer steps one tensor per parameter group where
the raw loop's steps every parameter), which make its steps cheaper. ``--ablation`` times the
Trainer with those off too, leaving the loop's own overhead. Each repeat runs every loop twice
in mirrored order (A-B-B-A, rotated each repeat) and the table shows medians over repeats.

    python bench/overhead.py                  # needs: pip install -e ".[bench]"
    python bench/overhead.py --rows 20000 --repeats 3 --sizes 64,64 256,256 1024,1024

The last line reads ``overhead ratio (mlsmith / raw loop): X.XX`` for the default model
(256-256), interleaved: the raw loop and the Trainer alternate step by step within one run (see
:func:`lockstep`), the one measurement this shared machine's drift does not swamp; lines above
give it for every size compared, and the table the runs timed one after another.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mlsmith.config import MLPConfig, TrainConfig
from mlsmith.data.batches import BatchOptions, TensorBatches
from mlsmith.models.mlp import TabularMLP
from mlsmith.tasks import BinaryTask
from mlsmith.training import trainer as trainer_module
from mlsmith.training.callbacks import Callback
from mlsmith.training.trainer import Trainer

SEED = 0


Loop = Callable[[torch.nn.Module, "Data", argparse.Namespace], None]


def make_data(rows: int, features: int) -> dict[str, np.ndarray]:
    """A binary problem with a non-linear signal, already standardised like mlsmith's output."""
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    logits = x[:, :8].sum(1) - 2.0 * x[:, 8] * x[:, 9] + np.sin(3 * x[:, 10])
    y = (logits + rng.normal(scale=0.5, size=rows) > 0).astype(np.float32)
    return {"x": x, "y": y}


def make_model(features: int, hidden: list[int]) -> torch.nn.Module:
    torch.manual_seed(SEED)
    return TabularMLP(features, [], 1, MLPConfig(hidden=hidden, dropout=0.0))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, object]]:
    params = list(model.parameters())
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def epoch_orders(n: int, epochs: int) -> list[torch.Tensor]:
    """The permutations TensorBatches draws: one seeded generator, one randperm per epoch."""
    generator = torch.Generator().manual_seed(SEED)
    return [torch.randperm(n, generator=generator) for _ in range(epochs)]


# --- (a) the minimal hand-written loop --------------------------------------------------------


def train_raw(model: torch.nn.Module, data: Data, args: argparse.Namespace) -> None:
    for _ in raw_loop(model, data, args):
        pass


def raw_loop(model: torch.nn.Module, data: Data, args: argparse.Namespace) -> Iterator[None]:
    """The raw loop, pausing after every step and after each epoch's validation (see
    :func:`lockstep`)."""
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr)
    x, y = torch.from_numpy(data.train["x"]), torch.from_numpy(data.train["y"])
    categorical = torch.zeros((args.batch_size, 0), dtype=torch.long)
    for order in epoch_orders(len(y), args.epochs):
        model.train()
        xs, ys = x[order], y[order]
        for i in range(0, len(ys), args.batch_size):
            xb, yb = xs[i : i + args.batch_size], ys[i : i + args.batch_size]
            out = model(xb, categorical[: len(yb)])
            loss = F.binary_cross_entropy_with_logits(out.squeeze(-1), yb)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            yield
        validate_raw(model, data, args)
        yield


def validate_raw(model: torch.nn.Module, data: Data, args: argparse.Namespace) -> float:
    model.eval()
    x, y = torch.from_numpy(data.val["x"]), torch.from_numpy(data.val["y"])
    empty = torch.zeros((len(y), 0), dtype=torch.long)
    total = 0.0
    with torch.inference_mode():
        for i in range(0, len(y), args.eval_batch_size):
            out = model(x[i : i + args.eval_batch_size], empty[i : i + args.eval_batch_size])
            total += F.binary_cross_entropy_with_logits(
                out.squeeze(-1), y[i : i + args.eval_batch_size], reduction="sum"
            ).item()
    return total / len(y)


# --- (b) the mlsmith Trainer ------------------------------------------------------------------


def train_mlsmith(
    model: torch.nn.Module,
    data: Data,
    args: argparse.Namespace,
    grad_norms: bool = True,
    callbacks: tuple[Callback, ...] = (),
) -> None:
    from mlsmith.training.progress import ProgressReporter

    config = TrainConfig(
        log_grad_norm=grad_norms,
        epochs=args.epochs,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        optimizer={"name": "adamw", "lr": args.lr, "weight_decay": args.weight_decay},
        early_stopping={"enabled": False},
        device="cpu",
    )

    def batches(split: dict[str, np.ndarray], size: int, shuffle: bool) -> TensorBatches:
        inputs = {
            "numeric": split["x"],
            "categorical": np.zeros((len(split["y"]), 0), dtype=np.int64),
        }
        return TensorBatches(inputs, split["y"], BatchOptions(size, shuffle=shuffle, seed=SEED))

    class FinalWeights(Callback):
        """The weights after the last epoch (fit() then restores the best checkpoint's)."""

        def on_epoch_end(self, trainer: Any, row: dict[str, float]) -> None:
            if trainer.epoch == trainer.epochs:
                final.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    final: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory() as checkpoints:
        # As `mlsmith train` runs it, with checkpoints every epoch and the per-epoch log line.
        trainer = Trainer(
            config,
            checkpoint_dir=checkpoints,
            callbacks=[ProgressReporter(live=False), FinalWeights(), *callbacks],
        )
        trainer.fit(
            model,
            batches(data.train, args.batch_size, shuffle=True),
            batches(data.val, args.eval_batch_size, shuffle=False),
            BinaryTask([0.0, 1.0]),
        )
    model.load_state_dict(final)


def train_mlsmith_without_grad_norms(
    model: torch.nn.Module, data: Data, args: argparse.Namespace
) -> None:
    """The Trainer with its one optional per-step diagnostic off: what that diagnostic costs."""
    train_mlsmith(model, data, args, grad_norms=False)


@contextlib.contextmanager
def per_parameter_optimizer() -> Iterator[None]:
    """The Trainer without its flat buffers (training/flat.py): the optimizer steps each
    parameter as the raw loop's does, so what remains between the two is the loop's own cost."""
    original = trainer_module.FlatBuffers.for_params
    trainer_module.FlatBuffers.for_params = lambda *_: None  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        trainer_module.FlatBuffers.for_params = original  # type: ignore[method-assign]


def train_mlsmith_per_parameter(
    model: torch.nn.Module, data: Data, args: argparse.Namespace
) -> None:
    """The Trainer, every diagnostic on, with the optimizer stepping each parameter."""
    with per_parameter_optimizer():
        train_mlsmith(model, data, args)


# --- (a) and (b) interleaved step by step ----------------------------------------------------


class Lockstep(Callback):
    """Runs one step of the raw loop after each Trainer step (and the raw validation after each
    Trainer epoch), timing the raw loop's share."""

    def __init__(self, raw: Iterator[None]) -> None:
        self.raw = raw
        self.raw_seconds = 0.0

    def advance(self) -> None:
        started = time.perf_counter()
        next(self.raw)
        self.raw_seconds += time.perf_counter() - started

    def on_train_step_end(self, trainer: Any) -> None:
        self.advance()

    def on_epoch_end(self, trainer: Any, row: dict[str, float]) -> None:
        self.advance()


def lockstep(
    initial: torch.nn.Module, data: Data, args: argparse.Namespace, grad_norms: bool = True
) -> tuple[float, float, torch.nn.Module, torch.nn.Module]:
    """Raw loop and Trainer in one run, alternating step by step: (raw seconds, Trainer
    seconds, raw model, Trainer model).

    The machine's speed drifts by 10-15% within a minute here, so two loops timed one after
    the other differ by more than the overhead being measured; alternating every few
    milliseconds gives both the same machine. The Trainer's time is the whole ``fit`` (setup,
    steps, validation, checkpoints) less the raw loop's share; the callback that runs the raw
    step is charged to the Trainer."""
    raw_model, model = copy.deepcopy(initial), copy.deepcopy(initial)
    interleave = Lockstep(raw_loop(raw_model, data, args))
    started = time.perf_counter()
    train_mlsmith(model, data, args, grad_norms=grad_norms, callbacks=(interleave,))
    total = time.perf_counter() - started
    return interleave.raw_seconds, total - interleave.raw_seconds, raw_model, model


def compare_lockstep(
    hidden: list[int], args: argparse.Namespace, grad_norms: bool = True, flat: bool = True
) -> tuple[float, list[float]]:
    """Median of the interleaved ratios (raw seconds / Trainer seconds) over the repeats, and
    each repeat's ratio; checks the maths as :func:`compare` does. ``flat``: the Trainer's flat
    buffers on (its default) or off (see :func:`per_parameter_optimizer`)."""
    data = Data(args.rows, args.features)
    initial = make_model(args.features, hidden)
    lockstep(initial, Data(2_000, args.features), args)  # warm-up, outside the figures
    ratios = []
    for repeat in range(args.repeats):
        with contextlib.nullcontext() if flat else per_parameter_optimizer():
            raw, mine, raw_model, model = lockstep(initial, data, args, grad_norms)
        ratios.append(raw / mine)
        print(
            f"  MLP {hidden} interleaved {repeat + 1}: raw {raw:.2f} s, mlsmith {mine:.2f} s",
            file=sys.stderr,
        )
    check_same_weights(raw_model, model, "interleaved")
    return statistics.median(ratios), ratios


# --- (c) PyTorch Lightning --------------------------------------------------------------------


def train_lightning(model: torch.nn.Module, data: Data, args: argparse.Namespace) -> None:
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = model
            self.empty = torch.zeros((max(args.batch_size, args.eval_batch_size), 0)).long()

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
            xb, yb = batch
            out = self.net(xb, self.empty[: len(yb)])
            return F.binary_cross_entropy_with_logits(out.squeeze(-1), yb)

        def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
            xb, yb = batch
            out = self.net(xb, self.empty[: len(yb)])
            self.log("val_loss", F.binary_cross_entropy_with_logits(out.squeeze(-1), yb))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(param_groups(self.net, args.weight_decay), lr=args.lr)

    class EpochBatches(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
        """Pre-sliced batches in the same per-epoch order as the other two loops."""

        def __init__(self) -> None:
            self.x, self.y = torch.from_numpy(data.train["x"]), torch.from_numpy(data.train["y"])
            self.orders = iter(epoch_orders(len(self.y), args.epochs))
            self.starts = range(0, len(self.y), args.batch_size)

        def __len__(self) -> int:
            return len(self.starts)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            if i == 0:
                order = next(self.orders)
                self.xs, self.ys = self.x[order], self.y[order]
            s = self.starts[i]
            return self.xs[s : s + args.batch_size], self.ys[s : s + args.batch_size]

    val = torch.utils.data.TensorDataset(
        torch.from_numpy(data.val["x"]), torch.from_numpy(data.val["y"])
    )
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            max_epochs=args.epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=root,
        )
        trainer.fit(
            Module(),
            torch.utils.data.DataLoader(EpochBatches(), batch_size=None, shuffle=False),
            torch.utils.data.DataLoader(val, batch_size=args.eval_batch_size),
        )


# --- harness ----------------------------------------------------------------------------------


def check_same_weights(raw: torch.nn.Module, trainer: torch.nn.Module, how: str) -> None:
    """Stop the benchmark unless the Trainer ended with the raw loop's weights (allclose)."""
    mine = trainer.state_dict()
    for key, value in raw.state_dict().items():
        if not torch.allclose(mine[key], value, rtol=1e-4, atol=1e-5):
            raise SystemExit(
                f"{how}: the Trainer's final weights differ from the raw loop's at {key}"
            )


class Data:
    def __init__(self, rows: int, features: int) -> None:
        full = make_data(rows + rows // 10, features)
        self.train = {k: v[:rows] for k, v in full.items()}
        self.val = {k: v[rows:] for k, v in full.items()}


def timed(
    fn: Callable[[torch.nn.Module, Data, argparse.Namespace], None],
    initial: torch.nn.Module,
    data: Data,
    args: argparse.Namespace,
) -> tuple[float, torch.nn.Module]:
    model = copy.deepcopy(initial)
    started = time.perf_counter()
    fn(model, data, args)
    return time.perf_counter() - started, model


def compare(
    hidden: list[int], args: argparse.Namespace, loops: dict[str, Loop]
) -> dict[str, tuple[float, float, float, float]]:
    """Median and best seconds, the paired ratio to the raw loop and max |w - w_raw| of each loop
    for one model size; checks the maths.

    The paired ratio is the median over repeats of raw-loop time / this loop's time within the
    same repeat: runs seconds apart share the machine's mood, so on a shared machine whose speed
    drifts by 5-10% over a minute it is the steadiest of the three figures."""
    data = Data(args.rows, args.features)
    initial = make_model(args.features, hidden)
    names = list(loops)
    times: dict[str, list[float]] = {name: [] for name in names}
    finals: dict[str, torch.nn.Module] = {}
    # One small run of each loop outside the clock: imports, allocator and kernel warm-up are
    # one-off costs, not per-step overhead.
    for fn in loops.values():
        timed(fn, initial, Data(2_000, args.features), args)
    for repeat in range(args.repeats):
        # A-B-B-A: each loop runs twice per repeat, in rotated order and then in reverse, and
        # counts the mean of its two runs. A run's speed depends on what ran just before it
        # (allocator and cache state) and the machine drifts within a repeat; the mirrored
        # order gives every loop the same neighbours and the same mean position, so neither
        # effect favours one loop. (Plain rotation left "raw loop" and "raw loop, again",
        # the same code, 5% apart.)
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        runs: dict[str, list[float]] = {name: [] for name in names}
        for name in order + order[::-1]:
            seconds, finals[name] = timed(loops[name], initial, data, args)
            runs[name].append(seconds)
        for name in names:
            times[name].append(statistics.fmean(runs[name]))
            print(
                f"  MLP {hidden} repeat {repeat + 1}: {name:<22} "
                + " + ".join(f"{s:.2f}" for s in runs[name])
                + " s",
                file=sys.stderr,
            )
    check_same_weights(finals["raw loop"], finals["mlsmith Trainer"], "timed in turn")
    reference = finals["raw loop"].state_dict()
    results = {}
    for name in names:
        state = finals[name].state_dict()
        diff = max((state[k] - reference[k]).abs().max().item() for k in reference)
        paired = statistics.median(
            raw / mine for raw, mine in zip(times["raw loop"], times[name], strict=True)
        )
        results[name] = (statistics.median(times[name]), min(times[name]), paired, diff)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["64,64", "256,256"],
        help="hidden layer widths of each model compared, e.g. 64,64 256,256 (the default "
        "model is 256,256): a fixed per-step cost weighs most on the smallest",
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--eval-batch-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-lightning", action="store_true")
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also time the Trainer with per-step gradient norms off (train.log_grad_norm=false) "
        "and with its flat buffers off (the optimizer stepping each parameter, as the raw loop's "
        "does: what is left is the loop's own overhead)",
    )
    args = parser.parse_args()

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    # The raw loop twice: how far apart two runs of the same code land is the machine's noise,
    # the floor under any difference the table shows.
    loops: dict[str, Loop] = {
        "raw loop": train_raw,
        "raw loop, again": train_raw,
        "mlsmith Trainer": train_mlsmith,
    }
    if args.ablation:
        loops["mlsmith, no grad norms"] = train_mlsmith_without_grad_norms
        loops["mlsmith, per-parameter"] = train_mlsmith_per_parameter
    if not args.no_lightning:
        loops["Lightning"] = train_lightning
    sizes = [[int(w) for w in size.split(",")] for size in args.sizes]
    results = {tuple(hidden): compare(hidden, args, loops) for hidden in sizes}
    interleaved = {tuple(hidden): compare_lockstep(hidden, args) for hidden in sizes}
    without_norms = (
        {tuple(hidden): compare_lockstep(hidden, args, grad_norms=False) for hidden in sizes}
        if args.ablation
        else {}
    )
    per_parameter = (
        {tuple(hidden): compare_lockstep(hidden, args, flat=False) for hidden in sizes}
        if args.ablation
        else {}
    )

    samples = args.rows * args.epochs
    print(
        f"\n{args.rows:,} rows x {args.features} features, batch {args.batch_size}, "
        f"{args.epochs} epochs, {args.repeats} repeats, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; mlsmith with every diagnostic on (per-step "
        "gradient norms and NaN checks, steps.csv rows, checkpoints each epoch)\n"
    )
    print(
        f"| {'model':<11} | {'loop':<22} | {'samples/s':>10} | {'vs raw':>6} "
        f"| {'vs raw, paired':>14} | {'vs raw, best':>12} | max abs w diff |"
    )
    print(f"|{'-' * 13}|{'-' * 24}|{'-' * 12}|{'-' * 8}|{'-' * 16}|{'-' * 14}|{'-' * 16}|")
    for hidden, by_loop in results.items():
        raw, raw_best = by_loop["raw loop"][:2]
        for name, (median, best, paired, diff) in by_loop.items():
            model = "MLP " + "-".join(map(str, hidden))
            print(
                f"| {model:<11} | {name:<22} | {samples / median:>10,.0f} | "
                f"{raw / median:>6.3f} | {paired:>14.3f} | {raw_best / best:>12.3f} "
                f"| {diff:>14.2e} |"
            )
    print(
        "\n(vs raw: ratio of median times; paired: median of the ratios within each repeat; "
        "best: of the fastest runs)"
    )
    for hidden, by_loop in results.items():
        (raw, raw_best), (mine, mine_best) = by_loop["raw loop"][:2], by_loop["mlsmith Trainer"][:2]
        model = "MLP " + "-".join(map(str, hidden))
        line = (
            f"{model}: overhead ratio (mlsmith / raw loop) {raw / mine:.3f} (median), "
            f"{by_loop['mlsmith Trainer'][2]:.3f} (paired), {raw_best / mine_best:.3f} (best); "
            f"noise (raw / raw again) {by_loop['raw loop, again'][2]:.3f} (paired)"
        )
        if "Lightning" in by_loop:
            line += f"; mlsmith {by_loop['Lightning'][0] / mine:.2f}x Lightning's samples/s"
        line += ", final weights " + (
            "bit-identical" if by_loop["mlsmith Trainer"][3] == 0 else "allclose"
        )
        print(line)
    print(
        "\nInterleaved (raw loop and Trainer alternating step by step in one run, so both get "
        "the same machine; raw seconds / Trainer seconds, median of the repeats):"
    )
    for hidden, (median, ratios) in interleaved.items():
        model = "MLP " + "-".join(map(str, hidden))
        print(f"{model}: {median:.3f} (" + ", ".join(f"{r:.3f}" for r in ratios) + ")")
        for label, ablated in (("no grad norms", without_norms), ("per-parameter", per_parameter)):
            if hidden in ablated:
                median, ratios = ablated[hidden]
                print(
                    f"{model}, {label}: {median:.3f} ("
                    + ", ".join(f"{r:.3f}" for r in ratios)
                    + ")"
                )
    default = interleaved.get((256, 256)) or next(iter(interleaved.values()))
    print(f"overhead ratio (mlsmith / raw loop): {default[0]:.2f}")


if __name__ == "__main__":
    main()
