"""Are the defaults good on data nobody tuned them on? Each family x dataset: the default config
against the best of a small grid, and the linear baseline beside them.

The grid varies one setting the defaults fix at a time (``--axis``: the learning rate, including
``lr: auto``'s range test; dropout; weight decay; width; the schedule; the epoch budget under
early stopping), every run keeping the rest of the family's defaults: one axis at a time, so a
default is judged where the others are. Each cell is the test-split score (accuracy, or RMSE for
regression) averaged over seeds; a run picks its best epoch on the validation split, as
``mlsmith train`` does.

The default is judged leave-one-dataset-out: for each dataset, the grid point that does best on
the *other* datasets of its kind (mean of score / best score) is what a default chosen without
this dataset would have been, and its ratio on this dataset is what a user with new data gets.
The two datasets issue 14 names (a product-review set, MNIST-1D) are not here: they are for
evaluation only and neither ships offline.

    python bench/defaults.py                        # mlp, bag, cnn; the learning rate; 2 seeds
    python bench/defaults.py --families mlp --seeds 1 --axis dropout

Prints one table per family, then the leave-one-out table; ratios are score / best of grid
(for RMSE: best / score), so 1.00 is as good as the grid's best and lower is worse.
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Axis:
    """One setting the grid varies: its config key and values per family (``*``: any family).

    Values are override strings as on the command line; the family's default is found among
    them at start-up (see :func:`default_value`)."""

    key: str | dict[str, str]  # the dotted key, or one per family
    values: dict[str, tuple[str, ...]]

    def key_for(self, family: str) -> str:
        return self.key if isinstance(self.key, str) else self.key[family]

    def values_for(self, family: str) -> tuple[str, ...]:
        return self.values.get(family, self.values.get("*", ()))


AXES: dict[str, Axis] = {
    # "auto" is the range test (train.optimizer.lr: auto).
    "lr": Axis("train.optimizer.lr", {"*": ("3e-4", "1e-3", "3e-3", "1e-2", "auto")}),
    "dropout": Axis(
        "model.dropout",
        {
            "mlp": ("0.0", "0.1", "0.3"),
            "bag": ("0.0", "0.2", "0.5"),
            "*": ("0.0", "0.1", "0.2", "0.4"),
        },
    ),
    "weight_decay": Axis("train.optimizer.weight_decay", {"*": ("0.0", "0.01", "0.1")}),
    "width": Axis(
        {
            "mlp": "model.hidden",
            "bag": "model.dim",
            "cnn": "model.channels",
            "transformer": "model.dim",
        },
        {
            "mlp": ("[64,32]", "[256,128]", "[512,256]"),
            "bag": ("8", "16", "64"),
            "cnn": ("[16,32,64]", "[32,64,128]", "[64,128,256]"),
            "transformer": ("64", "128", "256"),
        },
    ),
    "schedule": Axis("train.scheduler.name", {"*": ("none", "cosine", "onecycle")}),
    # With early stopping on (the default), the epoch count is a budget, not a setting.
    "epochs": Axis("train.epochs", {"*": ("10", "20", "50")}),
}


@dataclass(frozen=True)
class Dataset:
    name: str
    kind: str  # tabular | text | image
    make: Callable[[Path], dict[str, Any]]  # folder -> the config's data section


# --- datasets: shipped with scikit-learn or in examples/, or generated --------------------------


def _sklearn(name: str, target: str = "target") -> Callable[[Path], dict[str, Any]]:
    return lambda _: {"path": f"sklearn:{name}", "target": target}


def _penguins(_: Path) -> dict[str, Any]:
    return {"path": str(ROOT / "examples/data/penguins.csv"), "target": "species", "drop": ["year"]}


def _synthetic_classification(folder: Path) -> dict[str, Any]:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=3000, n_features=20, n_informative=8, n_redundant=4, n_classes=3,
        n_clusters_per_class=2, class_sep=0.8, flip_y=0.03, random_state=0,
    )  # fmt: skip
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])]).assign(label=y)
    frame.to_csv(folder / "synthetic.csv", index=False)
    return {"path": str(folder / "synthetic.csv"), "target": "label", "task": "multiclass"}


def _friedman(folder: Path) -> dict[str, Any]:
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=2000, n_features=10, noise=1.0, random_state=0)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])]).assign(y=y)
    frame.to_csv(folder / "friedman.csv", index=False)
    return {"path": str(folder / "friedman.csv"), "target": "y"}


def _mixed_types(folder: Path) -> dict[str, Any]:
    """A binary table with interacting categorical and numeric columns and missing values."""
    rng = np.random.default_rng(1)
    n = 4000
    city = rng.choice([f"c{i}" for i in range(30)], n)
    plan = rng.choice(["basic", "plus", "pro"], n, p=[0.6, 0.3, 0.1])
    age = rng.normal(40, 12, n)
    usage = rng.gamma(2.0, 3.0, n)
    effect = {f"c{i}": rng.normal(0, 0.8) for i in range(30)}
    logit = (
        np.vectorize(effect.get)(city) + 0.08 * (age - 40) * (plan == "pro")
        - 0.3 * np.log1p(usage) + np.where(plan == "basic", 0.6, -0.2)
    )  # fmt: skip
    label = rng.random(n) < 1 / (1 + np.exp(-logit))
    frame = pd.DataFrame({"city": city, "plan": plan, "age": age, "usage": usage, "churn": label})
    frame.loc[rng.random(n) < 0.1, "age"] = np.nan
    frame.to_csv(folder / "churn.csv", index=False)
    return {"path": str(folder / "churn.csv"), "target": "churn"}


def _reviews(_: Path) -> dict[str, Any]:
    return {
        "type": "text",
        "path": str(ROOT / "examples/data/rotten_tomatoes_6k.csv"),
        "target": "label",
        "text_column": "text",
    }


def _generated_texts(classes: int, noise: float, seed: int) -> Callable[[Path], dict[str, Any]]:
    """Topic-like texts: each class has its own words, drowned in shared ones; some labels flip."""

    def make(folder: Path) -> dict[str, Any]:
        rng = np.random.default_rng(seed)
        shared = [f"w{i}" for i in range(400)]
        own = {c: [f"t{c}_{i}" for i in range(40)] for c in range(classes)}
        rows = []
        for _ in range(3000):
            label = int(rng.integers(classes))
            words = list(rng.choice(shared, rng.integers(5, 40)))
            # A text carries 0-3 of its class's words and sometimes another class's.
            words += list(rng.choice(own[label], rng.integers(0, 4)))
            words += list(rng.choice(own[int(rng.integers(classes))], rng.integers(0, 2)))
            rng.shuffle(words)
            if rng.random() < noise:
                label = int(rng.integers(classes))
            rows.append((" ".join(words), f"class{label}"))
        name = f"texts_{classes}_{seed}.csv"
        pd.DataFrame(rows, columns=["text", "label"]).to_csv(folder / name, index=False)
        return {"type": "text", "path": str(folder / name), "target": "label"}

    return make


def _images(name: str, images: np.ndarray, labels: np.ndarray, folder: Path) -> dict[str, Any]:
    np.savez(folder / f"{name}.npz", images=images, label=labels)
    return {"type": "image", "path": str(folder / f"{name}.npz"), "target": "label"}


def _digits_images(folder: Path) -> dict[str, Any]:
    """scikit-learn's 8x8 digits (1,797) as grey images, pixels scaled to 0-255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return _images(
        "digits8", (digits.images * 16).clip(0, 255).astype(np.uint8), digits.target, folder
    )


def _mnist_2k(folder: Path) -> dict[str, Any]:
    """2,000 of the shipped MNIST digits (a seeded sample): a short run on 2 cores."""
    data = np.load(ROOT / "examples/data/mnist_5k.npz")
    rows = np.random.default_rng(0).choice(len(data["label"]), 2000, replace=False)
    return _images("mnist2k", data["images"][rows], data["label"][rows], folder)


def _blobs(folder: Path) -> dict[str, Any]:
    """4 classes of 24x24 colour images: a bright blob at a class-dependent place and tint, on
    noise, with jitter in position and size."""
    rng = np.random.default_rng(2)
    n, side = 1600, 24
    labels = rng.integers(0, 4, n)
    images = rng.integers(0, 90, (n, side, side, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:side, :side]
    for i, label in enumerate(labels):
        angle = np.pi / 2 * label + rng.normal(0, 0.4)
        cy, cx = side / 2 + side / 4 * np.sin(angle), side / 2 + side / 4 * np.cos(angle)
        radius = rng.uniform(2, 5)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        images[i][mask] = rng.integers(150, 256, 3)
    return _images("blobs", images, labels, folder)


DATASETS: tuple[Dataset, ...] = (
    Dataset("breast_cancer", "tabular", _sklearn("breast_cancer")),
    Dataset("wine", "tabular", _sklearn("wine")),
    Dataset("digits (as a table)", "tabular", _sklearn("digits")),
    Dataset("penguins", "tabular", _penguins),
    Dataset("synthetic 3-class", "tabular", _synthetic_classification),
    Dataset("churn (mixed types)", "tabular", _mixed_types),
    Dataset("diabetes (regression)", "tabular", _sklearn("diabetes")),
    Dataset("friedman1 (regression)", "tabular", _friedman),
    Dataset("digits 8x8 (images)", "image", _digits_images),
    Dataset("mnist 2k", "image", _mnist_2k),
    Dataset("blobs 24x24 colour", "image", _blobs),
    Dataset("rotten tomatoes 6k", "text", _reviews),
    Dataset("topics, 4 classes", "text", _generated_texts(4, 0.1, 0)),
    Dataset("topics, 2 classes", "text", _generated_texts(2, 0.2, 1)),
)
FAMILIES: dict[str, str] = {
    "mlp": "tabular",
    "bag": "text",
    "transformer": "text",
    "cnn": "image",
}


# --- runs ---------------------------------------------------------------------------------------


def score(run_dir: Path) -> tuple[float, float, str]:
    """(test score, the linear baseline's, metric name) of a finished run."""
    import json

    metrics = json.loads((run_dir / "metrics.json").read_text())
    name = "rmse" if "rmse" in metrics["test"] else "accuracy"
    baseline = metrics.get("baseline", {}).get("test", {}).get(name, {}).get("value", np.nan)
    return float(metrics["test"][name]["value"]), float(baseline), name


def default_value(family: str, axis: Axis) -> str:
    """The family's default for ``axis``, as one of the axis' values (checked, so the table's
    "default" column is the real default and not a copy that has drifted). Each value is read
    through mlsmith's own override parsing, as the runs read it."""
    from mlsmith.config import load_config

    raw = {
        "data": {
            "tabular": {"path": "x.csv", "target": "y"},
            "text": {"type": "text", "path": "x.csv", "target": "y", "text_column": "text"},
            "image": {"type": "image", "path": "x.npz", "target": "label"},
        }[FAMILIES[family]],
        "model": {"type": family},
    }
    key = axis.key_for(family)

    def read(overrides: list[str]) -> Any:
        return functools.reduce(getattr, key.split("."), load_config(raw, overrides))

    default = read([])
    for candidate in axis.values_for(family):
        if read([f"{key}={candidate}"]) == default:
            return candidate
    raise SystemExit(f"{family}: the default {key}={default} is not in the grid")


def train_once(
    data: dict[str, Any], family: str, overrides: list[str], seed: int, out: Path
) -> tuple[float, float, str]:
    from mlsmith import train

    config = {
        "experiment": "defaults",
        "seed": seed,
        "output_dir": str(out),
        "data": data,
        "model": {"type": family},
        "track": {"enabled": False},
        "eval": {"bootstrap": 0, "report": False, "baseline": True},
        "export": {"package": False},
        "train": {"preflight": False},
    }
    run = train(config, overrides, progress=False, epoch_lines=False)
    return score(run.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--families", nargs="+", default=["mlp", "bag", "cnn"], choices=list(FAMILIES)
    )
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--axis", default="lr", choices=list(AXES), help="the setting varied")
    parser.add_argument(
        "--values",
        nargs="+",
        help="the axis' values (default: its grid); the first is the reference column",
    )
    parser.add_argument(
        "--datasets", nargs="+", help="only datasets whose name starts with one of these"
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="overrides every run keeps (e.g. to check two axes' choices together)",
    )
    args = parser.parse_args()
    axis = AXES[args.axis]
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("mlsmith").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for family in args.families:
            datasets = [d for d in DATASETS if d.kind == FAMILIES[family]]
            if args.datasets:
                datasets = [d for d in datasets if d.name.startswith(tuple(args.datasets))]
            values = list(args.values or axis.values_for(family))
            default = default_value(family, axis) if args.values is None else values[0]
            key = axis.key_for(family)
            # scores[dataset][value] = mean test score over seeds
            scores: dict[str, dict[str, float]] = {}
            baselines: dict[str, float] = {}
            lower_better: dict[str, bool] = {}
            for dataset in datasets:
                data = dataset.make(folder)
                scores[dataset.name] = {}
                for value in values:
                    results = [
                        train_once(
                            data, family, [*args.set, f"{key}={value}"], seed, folder / "runs"
                        )
                        for seed in range(args.seeds)
                    ]
                    scores[dataset.name][value] = statistics.fmean(r[0] for r in results)
                    baselines[dataset.name] = statistics.fmean(r[1] for r in results)
                    lower_better[dataset.name] = results[0][2] == "rmse"
                    print(
                        f"  {family:<11} {dataset.name:<24} {key}={value:<12} "
                        f"{scores[dataset.name][value]:.4f}  "
                        f"({time.perf_counter() - started:.0f} s)",
                        file=sys.stderr,
                    )
            report(family, key, values, default, scores, baselines, lower_better)
    print(f"\n{time.perf_counter() - started:.0f} s in all")


def ratios(
    scores: dict[str, dict[str, float]], lower_better: dict[str, bool]
) -> dict[str, dict[str, float]]:
    """score / best of the grid per dataset (best / score for an error): 1.0 is the best."""
    out = {}
    for name, by_lr in scores.items():
        if lower_better[name]:
            best = min(by_lr.values())
            out[name] = {lr: best / value for lr, value in by_lr.items()}
        else:
            best = max(by_lr.values())
            out[name] = {lr: value / best for lr, value in by_lr.items()}
    return out


def report(
    family: str,
    key: str,
    values: list[str],
    default: str,
    scores: dict[str, dict[str, float]],
    baselines: dict[str, float],
    lower_better: dict[str, bool],
) -> None:
    relative = ratios(scores, lower_better)
    print(f"\n### {family}: test score by {key} (accuracy; rmse for regression)\n")
    head = " | ".join(values)
    print(f"| dataset | {head} | linear baseline | default ({default}) / best |")
    print("|---|" + "---:|" * (len(values) + 2))
    for name, by_value in scores.items():
        cells = " | ".join(f"{by_value[v]:.4f}" for v in values)
        print(f"| {name} | {cells} | {baselines[name]:.4f} | {relative[name][default]:.3f} |")
    print(
        f"\n### {family}: leave one dataset out (the grid point best on the others, on this one)\n"
    )
    print(f"| held-out dataset | chosen on the others | its ratio here | default {default} here |")
    print("|---|---|---:|---:|")
    chosen_ratios, default_ratios = [], []
    for name in scores:
        others = [n for n in scores if n != name] or [name]
        chosen = max(values, key=lambda v: statistics.fmean(relative[n][v] for n in others))
        chosen_ratios.append(relative[name][chosen])
        default_ratios.append(relative[name][default])
        print(f"| {name} | {chosen} | {relative[name][chosen]:.3f} | {default_ratios[-1]:.3f} |")
    overall = max(values, key=lambda v: statistics.fmean(relative[n][v] for n in scores))
    print(
        f"\n{family} {key}: mean ratio leave-one-out {statistics.fmean(chosen_ratios):.3f} "
        f"(worst {min(chosen_ratios):.3f}), default {default} "
        f"{statistics.fmean(default_ratios):.3f} (worst {min(default_ratios):.3f}); "
        f"best on all datasets: {overall}"
    )


if __name__ == "__main__":
    main()
