"""What the reports say about a run beyond its raw files: progress, observations, limitations.

Computed once from a :class:`RunRecord` and rendered by both the HTML and the Markdown writers,
so the two always agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlsmith.reports.runinfo import (
    NOT_RECORDED,
    RunRecord,
    format_bytes,
    format_ci,
    format_number,
    format_seconds,
    format_value,
)

# The metrics a comparison or a summary leads with, in this order, when a run has them.
HEADLINE_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "roc_auc",
    "pr_auc",
    "log_loss",
    "top5_accuracy",
    "rmse",
    "mae",
    "r2",
)


@dataclass(frozen=True)
class ClassMetrics:
    """Test-split precision, recall, F1 and support of one class."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int


def metric_rows(record: RunRecord) -> list[tuple[str, str, str, str]]:
    """(split, metric, value, confidence interval) for every recorded metric, test split first."""
    order = sorted(record.metrics, key=lambda s: {"test": 0, "val": 1}.get(s, 2))
    return [
        (split, name, format_number(entry.get("value")), format_ci(entry))
        for split in order
        for name, entry in record.metrics[split].items()
        if isinstance(entry, dict) and "value" in entry  # not a per-class block
    ]


def baseline_rows(record: RunRecord) -> list[tuple[str, str, str, str, str, str]]:
    """(metric, model, baseline, difference, its interval, majority) on the held-out split."""
    difference = record.sections.get("vs_baseline") or {}
    if not difference:
        return []
    split = next(iter(difference))
    majority = (record.sections.get("majority") or {}).get(split) or {}
    return [
        (
            name,
            format_number(entry.get("a")),
            format_number(entry.get("b")),
            _signed(entry.get("value")),
            format_ci(entry),
            format_number((majority.get(name) or {}).get("value")),
        )
        for name, entry in difference[split].items()
    ]


def baseline_summary(record: RunRecord) -> str:
    """One sentence: which baseline, how it was chosen, and whether the model beats it."""
    about = record.info.get("baseline")
    if not isinstance(about, dict) or not about.get("name"):
        return "No baseline was fitted (eval.baseline=false, or the data kind has none)."
    params = about.get("params") or {}
    chosen = (
        f"regularisation chosen over {params.get('grid')} values on the validation split, "
        f"fitted on {format_number(params.get('train_rows'))} training rows"
    )
    split, metric = about.get("split", "test"), about.get("metric", "")
    low, high = (about.get("ci95") or [None, None])[:2]
    interval = f" (95% CI {_signed(low)} to {_signed(high)})" if low is not None else ""
    verdict = {True: "beats", False: "does not beat", None: "cannot be compared with"}[
        about.get("beats")
    ]
    return (
        f"Baseline: {about['name']} on {params.get('features', 'the same inputs')} "
        f"({chosen}). On the {split} split the model {verdict} it: {metric} "
        f"{format_number(about.get('model'))} vs {format_number(about.get('baseline'))}, "
        f"difference {_signed(about.get('difference'))}{interval}."
    )


def _signed(value: Any) -> str:
    text = format_number(value)
    return text if text.startswith("-") or text == "-" else f"+{text}"


def progress_facts(record: RunRecord) -> list[tuple[str, str]]:
    """Key numbers of the training loop, as (label, value) rows."""
    info, cfg = record.info, record.config.train
    epochs_run = info.get("epochs_run")
    if epochs_run is None and record.history is not None:
        epochs_run = len(record.history)
    rows = [
        ("status", str(info.get("status", NOT_RECORDED))),
        ("epochs run", f"{epochs_run} of {cfg.epochs}" if epochs_run is not None else NOT_RECORDED),
        ("stopped early", _stopped_early_text(record)),
        ("best epoch", _best_epoch_text(record)),
        ("train/loss at best epoch", _number_at_best(record, "train/loss")),
        ("val/loss at best epoch", _number_at_best(record, "val/loss")),
        ("train/val gap at best epoch", _gap_text(record)),
        ("training time", format_seconds(info.get("train_seconds"))),
    ]
    throughput = record.history_column("samples_per_s")
    if throughput is not None:
        rows.append(("mean throughput", f"{float(throughput.mean()):,.0f} samples/s"))
    memory = record.history_column("memory_mb")
    if memory is not None:
        rows.append(("peak memory", f"{float(memory.max()):,.0f} MB"))
    return rows + _profile_facts(record.profile)


def _profile_facts(profile: dict[str, Any] | None) -> list[tuple[str, str]]:
    """train.profile's summary in two rows: step time and its split, the costliest operators."""
    if not profile or not profile.get("steps"):
        return []
    share = profile.get("data_wait_share")
    waiting = f", {share:.0%} of it waiting for data" if isinstance(share, (int, float)) else ""
    top = ", ".join(
        f"{op['name']} {format_number(op['self_cpu_ms'])} ms"
        for op in (profile.get("top_cpu_operators") or [])[:3]
    )
    return [
        (
            "profiled step",
            f"{format_number(profile.get('step_ms'))} ms over {profile['steps']} steps"
            f"{waiting} (profile/trace.json)",
        ),
        ("top operators (self CPU)", top or NOT_RECORDED),
    ]


def observations(record: RunRecord) -> list[str]:
    """Sentences about the run: what the loop recorded, then what the history shows."""
    # Sentence case, whatever case the training loop wrote its notes in.
    recorded = [
        str(line)[:1].upper() + str(line)[1:] for line in record.info.get("observations") or []
    ]
    derived = []
    best = record.best_epoch
    if record.history is not None and best is not None:
        derived.append(
            f"Best epoch {best} of {len(record.history)} by {record.monitor} "
            f"({_at_best(record, record.monitor)}); checkpoints/best.pt holds its weights."
        )
    # The training loop words its own notes on early stopping and overfitting; do not repeat.
    said = " ".join(recorded).lower()
    if record.info.get("stopped_early") and not ("early stopping" in said or _timed_out(record)):
        derived.append(f"Stopped early {_early_stop_detail(record)}.")
    gap = _gap(record)
    if gap is not None:
        derived.append(
            f"At the best epoch val/loss - train/loss = {format_number(gap)} "
            "(train/loss is averaged over the epoch in training mode, e.g. with dropout on)."
        )
    warning = overfitting_warning(record)
    if warning and "overfitting" not in said:
        derived.append(warning)
    return recorded + [line for line in derived if line not in recorded]


def overfitting_warning(record: RunRecord) -> str | None:
    """A warning when val/loss rose while train/loss fell over the last epochs, else None."""
    train, val = record.history_column("train/loss"), record.history_column("val/loss")
    if train is None or val is None:
        return None
    patience = max(1, int(getattr(record.config.train, "overfit_patience", 3) or 3))
    t, v = train.to_numpy(dtype=float), val.to_numpy(dtype=float)
    rising = 0
    for i in range(len(t) - 1, 0, -1):
        if v[i] > v[i - 1] and t[i] < t[i - 1]:
            rising += 1
        else:
            break
    if rising < patience:
        return None
    return (
        f"Overfitting warning: val/loss rose for the last {rising} epochs while train/loss fell "
        f"({format_number(v[-rising - 1])} -> {format_number(v[-1])}); more data, regularisation "
        "or an earlier stop would help."
    )


def per_class_metrics(record: RunRecord) -> list[ClassMetrics]:
    """Precision/recall/F1/support per class on the test predictions; empty without them."""
    predictions, classes = record.predictions, record.classes
    if predictions is None or not record.is_classification or not classes:
        return []
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        predictions["target"].astype(str),
        predictions["prediction"].astype(str),
        labels=classes,
        zero_division=0,
    )
    return [
        ClassMetrics(label, float(p), float(r), float(f), int(s))
        for label, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
    ]


def measured_limitations(record: RunRecord) -> list[str]:
    """Weaknesses the evaluation shows: worst classes, sparse classes, wide intervals..."""
    notes: list[str] = []
    split = record.headline_split
    if split is None:
        return [f"No evaluation was recorded; the model's quality is {NOT_RECORDED}."]
    if split != "test":
        notes.append(
            "There is no held-out test split: the metrics come from the validation split, which "
            "also picked the best epoch, so they are optimistic."
        )
    rows = (record.info.get("data") or {}).get("rows", {}).get(split)
    headline = next((m for m in HEADLINE_METRICS if m in record.metrics[split]), None)
    if headline:
        entry = record.metrics[split][headline]
        low, high = entry.get("ci95") or (None, None)
        if low is not None and high is not None:
            size = f" has {rows:,} rows:" if isinstance(rows, int) else ":"
            notes.append(
                f"The {split} split{size} {headline} is {format_number(entry.get('value'))} with "
                f"a {record.ci_level} interval {format_ci(entry)} "
                f"(width {format_number(high - low)})."
            )
    classes = per_class_metrics(record)
    if len(classes) >= 2:
        ranked = sorted(classes, key=lambda c: (c.f1, c.recall))
        for c in ranked[: 3 if len(classes) > 3 else 1]:
            notes.append(
                f"Weakest class '{c.label}': F1 {format_number(c.f1)}, recall "
                f"{format_number(c.recall)}, precision {format_number(c.precision)} "
                f"({c.support} test rows)."
            )
        sparse = [c for c in classes if c.support < 10]
        if sparse:
            names = ", ".join(f"'{c.label}' ({c.support})" for c in sparse[:5])
            notes.append(f"Few test rows for {names}: their per-class metrics are uncertain.")
    elif record.task == "ranking":
        notes.extend(_ranking_limitations(record))
    elif not record.is_classification:
        notes.extend(_regression_limitations(record))
    warning = overfitting_warning(record)
    if warning:
        notes.append(warning)
    return notes


def preflight_rows(record: RunRecord) -> list[tuple[str, str, str, str]]:
    """(group, check, status, detail) of each pre-flight check; empty when none ran."""
    results = (record.preflight or {}).get("results") or []
    return [
        (
            str(r.get("group", "")),
            str(r.get("name", "")),
            str(r.get("status", "")),
            str(r.get("detail", "")),
        )
        for r in results
        if isinstance(r, dict)
    ]


def preflight_summary(record: RunRecord) -> str:
    """E.g. "Quick checks before training: 16 pass, 1 warn, 2 skip"."""
    counts: dict[str, int] = {}
    for _, _, status, _ in preflight_rows(record):
        counts[status] = counts.get(status, 0) + 1
    mode = "Quick" if (record.preflight or {}).get("quick") else "Full"
    return f"{mode} checks before training: " + ", ".join(f"{n} {s}" for s, n in counts.items())


def artifact_rows(record: RunRecord) -> list[tuple[str, str]]:
    """(file, size) for every file in the run directory."""
    return [(name, format_bytes(size)) for name, size in record.artifacts]


def environment_rows(record: RunRecord) -> list[tuple[str, str]]:
    """Versions, device, commits, fingerprint and seed, as (label, value) rows."""
    env = record.info.get("environment") or {}
    packages = env.get("packages") or {}
    hardware = env.get("hardware") or {}
    rows = [
        ("mlsmith", str(env.get("mlsmith", NOT_RECORDED))),
        ("python", str(env.get("python", NOT_RECORDED))),
        ("packages", ", ".join(f"{k} {v}" for k, v in packages.items()) or NOT_RECORDED),
        ("device", str(env.get("device", NOT_RECORDED))),
        ("hardware", ", ".join(f"{k} {v}" for k, v in hardware.items()) or NOT_RECORDED),
        ("platform", str(env.get("platform", NOT_RECORDED))),
        ("project commit", _git_text(env, "project_git")),
        ("mlsmith commit", _git_text(env, "mlsmith_git")),
        ("data fingerprint", str(record.info.get("data_fingerprint") or NOT_RECORDED)),
        ("seed", str(record.config.seed)),
        ("deterministic", "yes" if record.config.train.deterministic else "no"),
        ("command", str(env.get("command") or NOT_RECORDED)),
    ]
    if record.info.get("mlflow_run_id"):
        rows.append(
            ("MLflow run", f"{record.info['mlflow_run_id']} at {record.info.get('tracking_uri')}")
        )
    return rows


def data_rows(record: RunRecord) -> list[tuple[str, str]]:
    """The data summary from run.json, one row per key (rows per split spelled out)."""
    summary = record.info.get("data") or {}
    rows = []
    for key, value in summary.items():
        if key == "rows" and isinstance(value, dict):
            value = ", ".join(f"{split} {n:,}" for split, n in value.items())
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = ", ".join(value) or "none"
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {format_value(v)}" for k, v in value.items())
        elif isinstance(value, float) and key.endswith("share"):
            value = f"{100 * value:.1f}%"
        rows.append(
            (key.replace("_", " "), value if isinstance(value, str) else format_value(value))
        )
    return rows


def hyperparameter_rows(record: RunRecord) -> list[tuple[str, str]]:
    """The model's settings and the training settings that matter most, as (key, value)."""
    flat = record.config.flat()
    keys = [k for k in flat if k.startswith("model.") and k != "model.type"] + [
        f"train.{k}"
        for k in (
            "epochs",
            "batch_size",
            "optimizer.name",
            "optimizer.lr",
            "optimizer.weight_decay",
            "scheduler.name",
            "scheduler.warmup_epochs",
            "grad_accum_steps",
            "grad_clip",
            "precision",
            "early_stopping.enabled",
            "early_stopping.monitor",
            "early_stopping.patience",
            "checkpoint.monitor",
        )
    ]
    rows = [(key, format_value(flat[key])) for key in keys if key in flat]
    auto = record.info.get("lr_auto")
    if isinstance(auto, dict) and isinstance(auto.get("lr"), (int, float)):
        # The rate trained with, and how it was chosen: the config only says "auto".
        rows = [
            (key, f"auto: {auto['lr']:.3g} ({auto.get('rule', 'LR range test')})")
            if key == "train.optimizer.lr"
            else (key, value)
            for key, value in rows
        ]
    return rows


def reproduce_command(record: RunRecord) -> str:
    """The command that trains this run again from its own resolved config."""
    return f"mlsmith train {record.path / 'config.yaml'}"


# --- helpers ----------------------------------------------------------------------------------


def _number_at_best(record: RunRecord, column: str) -> str:
    value = _value_at_best(record, column)
    return format_number(value) if value is not None else NOT_RECORDED


def _at_best(record: RunRecord, column: str) -> str:
    value = _value_at_best(record, column)
    return f"{column} {format_number(value)}" if value is not None else NOT_RECORDED


def _value_at_best(record: RunRecord, column: str) -> float | None:
    best, history = record.best_epoch, record.history
    if best is None or history is None or column not in history or "epoch" not in history:
        return None
    rows = history.loc[history["epoch"] == best, column]
    value = float(rows.iloc[0]) if len(rows) else math.nan
    return value if math.isfinite(value) else None


def _gap(record: RunRecord) -> float | None:
    train, val = _value_at_best(record, "train/loss"), _value_at_best(record, "val/loss")
    return None if train is None or val is None else val - train


def _gap_text(record: RunRecord) -> str:
    gap = _gap(record)
    return NOT_RECORDED if gap is None else f"{format_number(gap)} (val/loss - train/loss)"


def _best_epoch_text(record: RunRecord) -> str:
    best = record.best_epoch
    if best is None:
        return NOT_RECORDED
    return f"{best} (by {record.monitor})"


def _stopped_early_text(record: RunRecord) -> str:
    stopped = record.info.get("stopped_early")
    if stopped is None:
        return NOT_RECORDED
    return f"yes, {_early_stop_detail(record)}" if stopped else "no"


def _early_stop_detail(record: RunRecord) -> str:
    stopping = record.config.train.early_stopping
    epochs = record.info.get("epochs_run")
    after = f"after epoch {epochs}: " if epochs else ""
    if _timed_out(record):
        return f"{after}the time budget train.max_time was spent"
    return f"{after}no improvement of {stopping.monitor} for {stopping.patience} epochs"


def _timed_out(record: RunRecord) -> bool:
    """Whether train.max_time stopped the run (the loop's observation says so)."""
    return any("train.max_time" in str(note) for note in record.info.get("observations") or [])


def _git_text(env: dict[str, Any], key: str) -> str:
    if key not in env:
        return NOT_RECORDED
    state = env[key]
    if not isinstance(state, dict) or not state.get("commit"):
        return "not a git work tree"
    return f"{state['commit']}{' (uncommitted changes)' if state.get('dirty') else ''}"


def error_by_target_fifth(
    actual: np.ndarray, predicted: np.ndarray
) -> tuple[np.ndarray, list[float]]:
    """Mean absolute error within each fifth of the rows sorted by true value.

    Returns the six edges of the fifths (min, 20%, ..., max) and the five MAEs (NaN for an
    empty fifth, which ties in the true values can cause).
    """
    edges = np.quantile(actual, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    fifth = np.searchsorted(edges[1:-1], actual, side="right")
    error = np.abs(actual - predicted)
    maes = [float(error[fifth == b].mean()) if (fifth == b).any() else math.nan for b in range(5)]
    return edges, maes


def _ranking_limitations(record: RunRecord) -> list[str]:
    """How many test queries the model ranks poorly (NDCG at the largest k below 0.5), and
    whether long queries rank worse than short ones."""
    from mlsmith.ranking_metrics import per_query_metrics, query_slices

    predictions = record.predictions
    if predictions is None or len(predictions) == 0:
        return []
    k = max(record.config.eval.ndcg_at)
    queries = predictions["query"].astype(str).to_numpy()
    values = per_query_metrics(
        predictions["target"].to_numpy(dtype=float),
        predictions["score"].to_numpy(dtype=float),
        queries,
        (k,),
    )[f"ndcg_{k}"]
    sizes = np.array([len(rows) for rows in query_slices(queries)[1]])
    scored = ~np.isnan(values)
    if scored.sum() < 5:
        return []
    values, sizes = values[scored], sizes[scored]
    notes = []
    poor = int((values < 0.5).sum())
    if poor:
        notes.append(
            f"{poor} of {len(values)} test queries have NDCG@{k} below 0.5 (the model ranks "
            "their relevant items low)."
        )
    long = sizes > np.median(sizes)
    if long.any() and (~long).any():
        gap = float(values[~long].mean() - values[long].mean())
        if gap > 0.05:
            notes.append(
                f"Queries with more than {int(np.median(sizes))} items rank worse: NDCG@{k} "
                f"{format_number(float(values[long].mean()))} vs "
                f"{format_number(float(values[~long].mean()))} for the shorter ones."
            )
    return notes


def _regression_limitations(record: RunRecord) -> list[str]:
    predictions = record.predictions
    if predictions is None or len(predictions) < 10:
        return []
    actual = predictions["target"].to_numpy(dtype=float)
    predicted = predictions["prediction"].to_numpy(dtype=float)
    if not (np.isfinite(actual).all() and np.isfinite(predicted).all()):
        return []
    edges, maes = error_by_target_fifth(actual, predicted)
    worst = int(np.nanargmax(maes))
    overall = float(np.abs(actual - predicted).mean())
    return [
        f"Errors are largest for true values from {edges[worst]:.4g} to {edges[worst + 1]:.4g} "
        f"(fifth {worst + 1} of 5 by true value): MAE {format_number(maes[worst])} there vs "
        f"{format_number(overall)} overall."
    ]


def cv_table(record: RunRecord) -> tuple[list[str], list[list[str]]]:
    """Cross-validation (eval.cv): one row per fold (its sizes and held-out headline metrics),
    then the mean +- std and the interval over the folds; no rows without CV."""
    held = record.cv.get("held_out") or {}
    names = [m for m in HEADLINE_METRICS if m in held] or list(held)[:4]
    if not names:
        return [], []
    info = record.info.get("cv") or {}
    sizes = {int(s["fold"]): s for s in info.get("sizes", [])}
    count = max(len(held[name].get("folds") or []) for name in names)
    rows = []
    for index in range(count):
        size = sizes.get(index + 1, {})
        label = f"{index + 1}" + (" (kept)" if info.get("kept_fold") == index + 1 else "")
        values = [(held[n].get("folds") or [])[index : index + 1] for n in names]
        cells = [format_number(v[0] if v else None) for v in values]
        rows.append(
            [label, format_number(size.get("train")), format_number(size.get("held_out")), *cells]
        )
    rows.append(
        [
            "mean +- std",
            "",
            "",
            *(
                f"{format_number(held[n].get('mean'))} +- {format_number(held[n].get('std'))}"
                for n in names
            ),
        ]
    )
    rows.append(["t-interval", "", "", *(format_ci(held[n]) for n in names)])
    return ["fold", "training rows", "held-out rows", *names], rows
