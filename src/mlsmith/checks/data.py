"""Data and split checks on the raw rows of each split (``PreparedData.frames``).

Leakage between splits (duplicates, single features) is in :mod:`mlsmith.checks.leakage`.
Thresholds, and why:

* **Class balance**: a class under 5% of train warns (accuracy hides it; consider
  balanced_accuracy or pr_auc as the monitor). A split whose class shares differ from train's by
  more than max(0.10, 1/sqrt(n)) in total variation warns: beyond what sampling noise explains.
* **Missing values**: a column more than half missing on train warns; constant columns warn.
  So does a column of numbers read as text because of a few strings such as '?' or 'unknown'
  (at least 90% of its values numbers): those strings are missing values pandas does not know.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from mlsmith.checks import CheckResult, Status
from mlsmith.checks.leakage import duplicates_across_splits, single_feature_leakage
from mlsmith.columns import NumbersAsText, numbers_as_text
from mlsmith.config import Config, DataConfig, TextDataConfig
from mlsmith.tasks import ClassificationTask, Task

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.data.base import PreparedData

MINORITY_SHARE = 0.05
MISSING_SHARE = 0.5
EMPTY_TEXT_SHARE = 0.05


def data_checks(config: Config, data: PreparedData) -> list[CheckResult]:
    """Every data and split check, in the order they are shown."""
    frames = data.frames
    target = config.data.target
    kind = config.data.type
    features = _feature_columns(config, data)
    if kind in ("segmentation", "detection"):  # images and their targets, checked as read
        return [
            split_sizes(data),
            CheckResult("data", "raw rows", "skip", "images are checked as they are read"),
            duplicates_across_splits(config, data, features),
        ]
    if "train" not in frames:  # a data kind that keeps no raw rows: only the sizes are known
        reason = "the data kind keeps no raw rows to check"
        return [
            split_sizes(data),
            CheckResult("data", "raw rows", "skip", reason),
            CheckResult("splits", "split checks", "skip", reason),
        ]
    return [
        target_present(frames, target),
        task_result(data.task, config.data.task, frames.get("train"), target),
        constant_columns(frames["train"], features, kind),
        missing_values(
            frames["train"], features, kind, text_numbers=_numbers_as_text(config, data)
        ),
        split_sizes(data),
        target_distribution(data.task, frames, target),
        queries(data)
        if data.task.kind == "ranking"
        else classes_in_every_split(data.task, frames, target),
        duplicates_across_splits(config, data, features),
        single_feature_leakage(config, data, features),
    ]


# --- data -------------------------------------------------------------------------------------


def target_present(frames: dict[str, pd.DataFrame], target: str) -> CheckResult:
    """The target column is in every split and labels every row."""
    missing = [name for name, frame in frames.items() if len(frame) and target not in frame]
    if missing:
        return CheckResult(
            "data", "target present", "fail", f"no column '{target}' in {', '.join(missing)}"
        )
    labelled = sum(len(frame) for frame in frames.values())
    return CheckResult("data", "target present", "pass", f"'{target}' labels {labelled:,} rows")


def task_result(task: Task, requested: str, train: pd.DataFrame | None, target: str) -> CheckResult:
    """The task and how it was decided, e.g. ``binary: 2 classes 'no', 'yes' (inferred)``."""
    how = "inferred" if requested == "auto" else "configured"
    if isinstance(task, ClassificationTask):
        shown = ", ".join(repr(c) for c in task.classes[:10])
        more = f", ... ({len(task.classes) - 10} more)" if len(task.classes) > 10 else ""
        detail = f"{task.kind}: {len(task.classes)} classes {shown}{more} ({how})"
    else:
        values = train[target].astype(float) if train is not None else None
        spread = (
            f", train mean {values.mean():.4g}, sd {values.std(ddof=0):.4g}"
            if values is not None and len(values)
            else ""
        )
        detail = f"{task.kind}{spread} ({how})"
    return CheckResult("data", "task", "pass", detail)


def constant_columns(train: pd.DataFrame, features: list[str], kind: str) -> CheckResult:
    """Features with a single value on train carry no signal (the text: every text the same)."""
    if kind == "image":
        return CheckResult("data", "constant columns", "skip", "not applicable to images")
    constant = [c for c in features if train[c].nunique(dropna=False) <= 1]
    if not constant:
        what = "the text column varies" if kind == "text" else f"all {len(features)} features vary"
        return CheckResult("data", "constant columns", "pass", f"{what} on train")
    if kind == "text":
        return CheckResult(
            "data",
            "constant columns",
            "warn",
            f"every training text in '{constant[0]}' is the same",
        )
    return CheckResult(
        "data",
        "constant columns",
        "warn",
        f"constant on train: {_names(constant)} (no signal; add to data.drop)",
    )


def missing_values(
    train: pd.DataFrame,
    features: list[str],
    kind: str,
    text_numbers: dict[str, NumbersAsText] | None = None,
) -> CheckResult:
    """Columns mostly missing on train (for text: the share of empty texts), and columns of
    numbers read as text (``text_numbers``: what :func:`_numbers_as_text` found)."""
    if kind == "image":
        return CheckResult("data", "missing values", "skip", "not applicable to images")
    if kind == "text":
        column = features[0]
        texts = train[column]
        empty = float((texts.isna() | (texts.astype(str).str.strip() == "")).mean())
        status: Status = "warn" if empty > EMPTY_TEXT_SHARE else "pass"
        return CheckResult(
            "data", "missing values", status, f"{empty:.1%} of training texts are empty"
        )
    shares = {c: float(train[c].isna().mean()) for c in features}
    mostly = {c: s for c, s in shares.items() if s > MISSING_SHARE}
    problems = []
    if mostly:
        listed = ", ".join(f"{c} {s:.0%}" for c, s in list(mostly.items())[:5])
        more = f" (+{len(mostly) - 5} more)" if len(mostly) > 5 else ""
        problems.append(
            f"mostly missing on train: {listed}{more}; imputed with the median, they carry little"
        )
    if text_numbers:
        listed = "; ".join(
            f"'{c}' ({found.describe(rows=False)})" for c, found in list(text_numbers.items())[:3]
        )
        more = f" (+{len(text_numbers) - 3} more)" if len(text_numbers) > 3 else ""
        problems.append(
            f"numbers read as text on train: {listed}{more}; add those strings to "
            "data.na_values, or list the column in data.categorical if it is a category"
        )
    if problems:
        return CheckResult("data", "missing values", "warn", "; ".join(problems))
    worst = max(shares, key=lambda c: shares[c]) if shares else None
    if worst is None or shares[worst] == 0.0:
        return CheckResult("data", "missing values", "pass", "no missing values on train")
    return CheckResult(
        "data",
        "missing values",
        "pass",
        f"no column over {MISSING_SHARE:.0%} missing (most: {worst} {shares[worst]:.1%})",
    )


# --- splits -----------------------------------------------------------------------------------


def split_sizes(data: PreparedData) -> CheckResult:
    """Rows per split; training and validation must not be empty."""
    sizes = {"train": len(data.train), "val": len(data.val), "test": len(data.test or [])}
    detail = ", ".join(f"{name} {n:,}" for name, n in sizes.items()) + " rows"
    empty = [name for name in ("train", "val") if sizes[name] == 0]
    if empty:
        return CheckResult(
            "splits", "split sizes", "fail", f"{detail}: {' and '.join(empty)} empty"
        )
    if sizes["test"] == 0:
        return CheckResult(
            "splits", "split sizes", "warn", f"{detail}: no test split, so no unbiased score"
        )
    return CheckResult("splits", "split sizes", "pass", detail)


def target_distribution(task: Task, frames: dict[str, pd.DataFrame], target: str) -> CheckResult:
    """Class shares per split (or the target's mean per split for regression)."""
    present = {name: f[target] for name, f in frames.items() if len(f)}
    if not isinstance(task, ClassificationTask):
        stats = {
            name: (float(v.astype(float).mean()), float(v.astype(float).std(ddof=0)))
            for name, v in present.items()
        }
        train_mean, train_sd = stats["train"]
        detail = " | ".join(f"{name} mean {m:.4g} (sd {s:.3g})" for name, (m, s) in stats.items())
        shifted = [
            name
            for name, (m, _) in stats.items()
            if train_sd > 0 and abs(m - train_mean) > 0.5 * train_sd
        ]
        status: Status = "warn" if shifted else "pass"
        if shifted:
            detail += f"; {', '.join(shifted)} differ from train by over half a train sd"
        return CheckResult("splits", "target distribution", status, detail)

    shares = {name: _class_shares(task, values) for name, values in present.items()}
    problems = []
    smallest = int(np.argmin(shares["train"]))
    if shares["train"][smallest] < MINORITY_SHARE:
        problems.append(
            f"class {task.classes[smallest]!r} is only {shares['train'][smallest]:.1%} of train "
            "(consider val/balanced_accuracy or val/pr_auc as the monitor)"
        )
    for name, share in shares.items():
        if name == "train":
            continue
        distance = 0.5 * float(np.abs(share - shares["train"]).sum())
        allowed = max(0.10, 1.0 / math.sqrt(len(present[name])))
        if distance > allowed:
            problems.append(f"{name} differs from train by {distance:.0%} (total variation)")
    if len(task.classes) <= 4:
        detail = " | ".join(
            f"{name}: "
            + ", ".join(f"{c} {s:.0%}" for c, s in zip(task.classes, share, strict=True))
            for name, share in shares.items()
        )
    else:
        train = shares["train"]
        gap = max(
            (float(np.abs(s - train).max()) for n, s in shares.items() if n != "train"),
            default=0.0,
        )
        detail = (
            f"{len(task.classes)} classes, train shares {train.min():.1%} to {train.max():.1%}; "
            f"other splits within {gap:.1%} of train"
        )
    if problems:
        return CheckResult("splits", "class balance", "warn", "; ".join(problems) + f" [{detail}]")
    return CheckResult("splits", "class balance", "pass", detail)


def classes_in_every_split(task: Task, frames: dict[str, pd.DataFrame], target: str) -> CheckResult:
    """Every class has rows in every split (a class absent from val cannot be validated)."""
    if not isinstance(task, ClassificationTask):
        return CheckResult("splits", "classes in every split", "skip", task.kind)
    absent = {
        name: task.absent_classes(frame[target]) for name, frame in frames.items() if len(frame)
    }
    absent = {name: classes for name, classes in absent.items() if classes}
    if absent:
        detail = "; ".join(
            f"{name} has no rows of {', '.join(repr(c) for c in classes[:5])}"
            for name, classes in absent.items()
        )
        return CheckResult("splits", "classes in every split", "warn", detail)
    return CheckResult(
        "splits",
        "classes in every split",
        "pass",
        f"all {len(task.classes)} classes in {', '.join(n for n, f in frames.items() if len(f))}",
    )


def queries(data: PreparedData) -> CheckResult:
    """A ranking's queries: none in two splits, and how many each split holds. Warns about
    queries with one item (nothing to rank) and held-out queries without a relevant item
    (they count in no ranking metric)."""
    splits = {
        name: (split.groups, split.target)
        for name, split in (("train", data.train), ("val", data.val), ("test", data.test))
        if split is not None and split.groups is not None and len(split)
    }
    ids = {name: set(np.unique(groups).tolist()) for name, (groups, _) in splits.items()}
    shared = [
        f"{a} and {b} share {len(ids[a] & ids[b])} queries (e.g. {sorted(ids[a] & ids[b])[0]!r})"
        for i, a in enumerate(ids)
        for b in list(ids)[i + 1 :]
        if ids[a] & ids[b]
    ]
    if shared:
        return CheckResult(
            "splits",
            "queries",
            "fail",
            "; ".join(shared) + ": a query's items must stay in one split, or the held-out "
            "scores are measured on queries the model trained on",
        )
    parts, problems = [], []
    for name, (groups, target) in splits.items():
        _, where, sizes = np.unique(groups, return_inverse=True, return_counts=True)
        relevant = np.bincount(where.reshape(-1), weights=target > 0, minlength=len(sizes))
        parts.append(
            f"{name} {len(sizes):,} queries ({int(sizes.min())}-{int(sizes.max())} items, "
            f"median {float(np.median(sizes)):g})"
        )
        single = int((sizes == 1).sum())
        if single:
            problems.append(f"{single} {name} queries have a single item (nothing to rank)")
        empty = int((relevant == 0).sum())
        if empty and name != "train":
            problems.append(
                f"{empty} of {len(sizes)} {name} queries have no relevant item (relevance > 0) "
                "and count in no metric"
            )
    detail = " | ".join(parts)
    if problems:
        return CheckResult("splits", "queries", "warn", "; ".join(problems) + f" [{detail}]")
    return CheckResult("splits", "queries", "pass", detail)


# --- helpers ----------------------------------------------------------------------------------


def _feature_columns(config: Config, data: PreparedData) -> list[str]:
    """The raw columns the model sees: table features, the text column, nothing for images."""
    if isinstance(config.data, TextDataConfig):
        return [config.data.text_column]
    return list(getattr(data.preprocessor, "features", []))


def _numbers_as_text(config: Config, data: PreparedData) -> dict[str, NumbersAsText]:
    """Categorical columns chosen automatically whose training values are mostly numbers.

    Columns the config lists in ``data.categorical`` are categories by choice: not reported.
    """
    if not isinstance(config.data, DataConfig) or config.data.categorical is not None:
        return {}
    train = data.frames["train"]
    found = {c: numbers_as_text(train[c]) for c in getattr(data.preprocessor, "categorical", [])}
    return {c: f for c, f in found.items() if f is not None}


def _names(columns: list[str], limit: int = 5) -> str:
    more = f" (+{len(columns) - limit} more)" if len(columns) > limit else ""
    return ", ".join(columns[:limit]) + more


def _class_shares(task: ClassificationTask, values: pd.Series) -> np.ndarray:
    codes = task.encode(values).astype(np.int64)
    counts = np.bincount(codes, minlength=len(task.classes)).astype(np.float64)
    return counts / max(1.0, counts.sum())
