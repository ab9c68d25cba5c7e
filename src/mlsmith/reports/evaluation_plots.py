"""Test-split plots as PNG bytes: confusion matrix, ROC, PR and calibration curves for classes;
predicted-vs-actual and residuals for regression; relevance by rank and NDCG per query for a
ranking.

They are drawn from ``test_predictions.csv`` (``target``, ``prediction``, ``proba_<class>``), so
a report never needs the model or the data again. Classification curves are one-vs-rest per
class, or for the positive class (the second) of a binary task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.reports.facts import error_by_target_fifth
from mlsmith.reports.plots import WIDTH, figure, legend, to_png

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

# Plots of the unit square (ROC, PR, calibration) and the confusion matrix: one height, so they
# line up two by two in the report.
SQUARE_HEIGHT = 4.8
# More classes than this and curves get no legend entry each (it would hide the plot).
MAX_LEGEND_CLASSES = 10
# More classes than this and confusion-matrix cells carry no numbers (unreadably small).
MAX_ANNOTATED_CLASSES = 20


def confusion_matrix(labels: list[str], matrix: list[list[int]], split: str) -> bytes | None:
    """Counts per (true, predicted) class, coloured by the share of the true class (recall)."""
    counts = np.asarray(matrix, dtype=float)
    if counts.ndim != 2 or counts.size == 0 or counts.shape != (len(labels), len(labels)):
        return None
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    side = max(SQUARE_HEIGHT, min(12.0, 0.45 * n + 2.5))
    with figure(max(WIDTH, side + 1.2), side) as fig:
        ax = fig.add_subplot()
        image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        colorbar = fig.colorbar(image, ax=ax, shrink=0.8)
        colorbar.set_label("share of the true class's rows")
        ax.set_xticks(
            range(n),
            labels=[_short(label) for label in labels],
            rotation=45 if n > 4 else 0,
            ha="right" if n > 4 else "center",
        )
        ax.set_yticks(range(n), labels=[_short(label) for label in labels])
        ax.grid(False)
        if n <= MAX_ANNOTATED_CLASSES:
            size = 10 if n <= 6 else 8 if n <= 12 else 6.5
            for i in range(n):
                for j in range(n):
                    # The share only where it says something: not for empty cells.
                    text = f"{int(counts[i, j])}"
                    if n <= 12 and counts[i, j] > 0:
                        text += f"\n{100 * share[i, j]:.0f}%"
                    color = "white" if share[i, j] > 0.6 else "black"
                    ax.text(j, i, text, ha="center", va="center", fontsize=size, color=color)
        ax.set_title(f"Confusion matrix ({split} split, {int(counts.sum()):,} rows)")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        return to_png(fig)


def roc_curves(predictions: pd.DataFrame, classes: list[str]) -> bytes | None:
    """ROC curve per class (one-vs-rest), or for the positive class of a binary task."""
    from sklearn.metrics import roc_auc_score, roc_curve

    pairs = list(_one_vs_rest(predictions, classes))
    if not pairs:
        return None
    with figure(WIDTH, SQUARE_HEIGHT) as fig:
        ax = fig.add_subplot()
        for i, (label, truth, score) in enumerate(pairs):
            fpr, tpr, _ = roc_curve(truth, score)
            auc = roc_auc_score(truth, score)
            ax.plot(
                fpr,
                tpr,
                linewidth=1.6,
                color=f"C{i % 10}",
                label=_legend_label(label, f"AUC {auc:.3f}", len(pairs)),
            )
        ax.plot([0, 1], [0, 1], color="0.5", linestyle=":", label="chance")
        _unit_square(ax)
        ax.set_title("ROC curve (test split)" + _ovr_note(classes, len(pairs)))
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate (recall)")
        legend(ax, loc="lower right")
        return to_png(fig)


def pr_curves(predictions: pd.DataFrame, classes: list[str]) -> bytes | None:
    """Precision-recall curve per class (one-vs-rest), with each class's base rate."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    pairs = list(_one_vs_rest(predictions, classes))
    if not pairs:
        return None
    with figure(WIDTH, SQUARE_HEIGHT) as fig:
        ax = fig.add_subplot()
        for i, (label, truth, score) in enumerate(pairs):
            precision, recall, _ = precision_recall_curve(truth, score)
            ap = average_precision_score(truth, score)
            color = f"C{i % 10}"
            ax.step(
                recall,
                precision,
                where="post",
                linewidth=1.6,
                color=color,
                label=_legend_label(label, f"AP {ap:.3f}", len(pairs)),
            )
            if len(pairs) == 1:
                rate = float(truth.mean())
                ax.axhline(rate, color="0.5", linestyle=":", label=f"base rate ({rate:.2f})")
        _unit_square(ax)
        ax.set_title("Precision-recall curve (test split)" + _ovr_note(classes, len(pairs)))
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        legend(ax, loc="lower left")
        return to_png(fig)


def calibration(predictions: pd.DataFrame, classes: list[str]) -> bytes | None:
    """Reliability diagram: observed frequency per bin of predicted probability."""
    from sklearn.calibration import calibration_curve

    pairs = list(_one_vs_rest(predictions, classes))
    if not pairs:
        return None
    # About ten rows per bin at least: fewer and each point is noise.
    bins = int(np.clip(len(predictions) // 10, 3, 10))
    binary = len(pairs) == 1
    with figure(WIDTH, SQUARE_HEIGHT) as fig:
        if binary:
            ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        else:
            ax, hist = fig.add_subplot(), None
        ax.plot([0, 1], [0, 1], color="0.5", linestyle=":", label="perfectly calibrated")
        for i, (label, truth, score) in enumerate(pairs):
            observed, predicted = calibration_curve(truth, score, n_bins=bins, strategy="uniform")
            ece = _expected_calibration_error(truth, score, bins)
            ax.plot(
                predicted,
                observed,
                marker="o",
                markersize=4,
                linewidth=1.6,
                color=f"C{i % 10}",
                label=_legend_label(label, f"ECE {ece:.3f}", len(pairs)),
            )
        _unit_square(ax)
        ax.set_title(f"Calibration (test split, {bins} bins)" + _ovr_note(classes, len(pairs)))
        ax.set_ylabel("observed frequency")
        if len(pairs) > 3:
            # Many classes: the legend beside the axes, not over the curves.
            legend(ax, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
        else:
            legend(ax, loc="upper left")
        if hist is not None:
            hist.hist(pairs[0][2], bins=bins, range=(0, 1), color="C0", alpha=0.7)
            hist.set_ylabel("rows")
            hist.set_xlabel(f"predicted probability of '{_short(pairs[0][0])}'")
        else:
            ax.set_xlabel("predicted probability")
        return to_png(fig)


def predicted_vs_actual(predictions: pd.DataFrame, target: str) -> bytes | None:
    """Predictions against true values, with the identity line."""
    actual, predicted = _regression_pairs(predictions)
    if actual is None or predicted is None:
        return None
    from sklearn.metrics import r2_score

    with figure() as fig:
        ax = fig.add_subplot()
        ax.scatter(
            actual, predicted, s=14, alpha=0.6, color="C0", edgecolors="none", label="test rows"
        )
        low = float(min(actual.min(), predicted.min()))
        high = float(max(actual.max(), predicted.max()))
        pad = 0.03 * (high - low or 1.0)
        ax.plot(
            [low - pad, high + pad],
            [low - pad, high + pad],
            color="C3",
            linestyle="--",
            label="perfect prediction",
        )
        ax.set_xlim(low - pad, high + pad)
        ax.set_ylim(low - pad, high + pad)
        ax.set_aspect("equal")
        r2 = r2_score(actual, predicted) if np.ptp(actual) > 0 else float("nan")
        ax.set_title(f"Predicted vs actual (test split, R\u00b2 {r2:.3f})")
        ax.set_xlabel(f"actual {target}")
        ax.set_ylabel(f"predicted {target}")
        legend(ax, loc="upper left")
        return to_png(fig)


def residuals(predictions: pd.DataFrame, target: str) -> bytes | None:
    """Residuals (actual - predicted) against the prediction: structure here is missed signal."""
    actual, predicted = _regression_pairs(predictions)
    if actual is None or predicted is None:
        return None
    with figure() as fig:
        ax = fig.add_subplot()
        ax.scatter(predicted, actual - predicted, s=14, alpha=0.6, color="C0", edgecolors="none")
        ax.axhline(0, color="C3", linestyle="--", label="no error")
        ax.set_title("Residuals vs prediction (test split)")
        ax.set_xlabel(f"predicted {target}")
        ax.set_ylabel(f"residual: actual - predicted {target}")
        legend(ax, loc="best")
        return to_png(fig)


def residual_distribution(predictions: pd.DataFrame, target: str) -> bytes | None:
    """Histogram of the residuals, with their mean (the bias) in the title."""
    actual, predicted = _regression_pairs(predictions)
    if actual is None or predicted is None:
        return None
    error = actual - predicted
    with figure() as fig:
        ax = fig.add_subplot()
        ax.hist(error, bins=int(np.clip(len(error) // 5, 5, 40)), color="C0", alpha=0.8)
        ax.axvline(0, color="C3", linestyle="--", label="no error")
        ax.axvline(float(error.mean()), color="0.3", linestyle=":", label="mean residual")
        ax.set_title(f"Residual distribution (test split, mean {error.mean():.3g})")
        ax.set_xlabel(f"residual: actual - predicted {target}")
        ax.set_ylabel("rows")
        legend(ax, loc="best")
        return to_png(fig)


def error_by_target(predictions: pd.DataFrame, target: str) -> bytes | None:
    """Mean absolute error in each fifth of the true values: where the model is weakest."""
    actual, predicted = _regression_pairs(predictions)
    if actual is None or predicted is None or len(actual) < 10:
        return None
    edges, maes = error_by_target_fifth(actual, predicted)
    error = np.abs(actual - predicted)
    labels = [f"{edges[b]:.3g} to {edges[b + 1]:.3g}" for b in range(5)]
    with figure() as fig:
        ax = fig.add_subplot()
        ax.bar(range(5), maes, color="C0", alpha=0.8, label="MAE in the fifth")
        ax.axhline(float(error.mean()), color="C3", linestyle="--", label="MAE overall")
        ax.set_xticks(range(5), labels=labels, rotation=15)
        ax.set_title("Error by target range (test split, fifths of the rows)")
        ax.set_xlabel(f"actual {target}")
        ax.set_ylabel(f"mean absolute error ({target})")
        ax.set_ylim(0, 1.25 * float(np.nanmax(maes)))
        legend(ax, loc="upper right", ncols=2)
        return to_png(fig)


# --- ranking ----------------------------------------------------------------------------------

# Rank positions the relevance-by-rank plot shows.
RANK_POSITIONS = 10


def relevance_by_rank(predictions: pd.DataFrame, target: str) -> bytes | None:
    """Mean relevance of the item the model put at each rank, against the best possible order
    (the queries' own items sorted by relevance) and a random order (the mean relevance)."""
    if not {"query", "target", "rank"} <= set(predictions.columns) or len(predictions) == 0:
        return None
    frame = predictions[["query", "target", "rank"]].dropna()
    positions = np.arange(1, RANK_POSITIONS + 1)
    model, ideal = [], []
    best = frame.assign(
        ideal=frame.groupby("query")["target"].rank(method="first", ascending=False)
    )
    for r in positions:
        model.append(float(frame.loc[frame["rank"] == r, "target"].mean()))
        ideal.append(float(best.loc[best["ideal"] == r, "target"].mean()))
    with figure() as fig:
        ax = fig.add_subplot()
        ax.plot(positions, ideal, marker="o", color="0.5", linestyle="--", label="ideal order")
        ax.plot(positions, model, marker="o", color="C0", label="model's order")
        ax.axhline(float(frame["target"].mean()), color="C3", linestyle=":", label="random order")
        ax.set_xticks(positions)
        ax.set_title("Relevance by rank (test split, mean over queries)")
        ax.set_xlabel("rank within the query")
        ax.set_ylabel(f"mean {target}")
        legend(ax, loc="upper right")
        return to_png(fig)


def ndcg_per_query(predictions: pd.DataFrame, k: int) -> bytes | None:
    """Histogram of each test query's NDCG@k: a mean hides queries the model ranks badly."""
    from mlsmith.ranking_metrics import per_query_metrics

    if not {"query", "target", "score"} <= set(predictions.columns) or len(predictions) == 0:
        return None
    values = per_query_metrics(
        predictions["target"].to_numpy(dtype=np.float64),
        predictions["score"].to_numpy(dtype=np.float64),
        predictions["query"].astype(str).to_numpy(),
        (k,),
    )[f"ndcg_{k}"]
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return None
    with figure() as fig:
        ax = fig.add_subplot()
        ax.hist(values, bins=[i / 20 for i in range(21)], color="C0", alpha=0.8)
        ax.axvline(float(values.mean()), color="C3", linestyle="--", label="mean")
        ax.set_title(f"NDCG@{k} per query (test split, {len(values)} queries)")
        ax.set_xlabel(f"NDCG@{k}")
        ax.set_ylabel("queries")
        legend(ax, loc="upper left")
        return to_png(fig)


# --- helpers ----------------------------------------------------------------------------------


def _one_vs_rest(
    predictions: pd.DataFrame, classes: list[str]
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(class, is-this-class, its probability) for each class a curve is defined for.

    Binary tasks give one pair, for the positive class. A class without positive or without
    negative rows in the test split has no curve.
    """
    columns = [f"proba_{c}" for c in classes]
    if len(classes) < 2 or not set(columns) <= set(predictions.columns):
        return []
    target = predictions["target"].astype(str).to_numpy()
    chosen = classes[1:] if len(classes) == 2 else classes
    pairs = []
    for label in chosen:
        truth = target == label
        score = predictions[f"proba_{label}"].to_numpy(dtype=float)
        if 0 < truth.sum() < len(truth) and np.isfinite(score).all():
            pairs.append((label, truth, score))
    return pairs


def _expected_calibration_error(truth: np.ndarray, score: np.ndarray, bins: int) -> float:
    """Row-weighted mean |observed - predicted| over equal-width probability bins."""
    index = np.minimum((score * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(index):
        rows = index == b
        total += rows.sum() * abs(truth[rows].mean() - score[rows].mean())
    return float(total / len(score))


def _regression_pairs(predictions: pd.DataFrame) -> tuple[np.ndarray | None, np.ndarray | None]:
    actual = predictions["target"].to_numpy(dtype=float)
    predicted = predictions["prediction"].to_numpy(dtype=float)
    keep = np.isfinite(actual) & np.isfinite(predicted)
    if not keep.any():
        return None, None
    return actual[keep], predicted[keep]


def _unit_square(ax: Axes) -> None:
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)


def _legend_label(label: str, score: str, count: int) -> str:
    # Matplotlib leaves out labels starting with an underscore.
    return f"{_short(label)} ({score})" if count <= MAX_LEGEND_CLASSES else "_nolegend_"


def _ovr_note(classes: list[str], curves: int) -> str:
    if len(classes) == 2:
        return f"\npositive class '{_short(classes[1])}'"
    return (
        "\none-vs-rest per class"
        if curves <= MAX_LEGEND_CLASSES
        else f"\none-vs-rest, {curves} classes"
    )


def _short(label: str, width: int = 18) -> str:
    return label if len(label) <= width else label[: width - 1] + "\u2026"


def slice_chart(column: str, entry: dict[str, Any]) -> bytes | None:
    """The headline metric of each slice of ``column`` with its interval; slices too small to
    judge in grey."""
    slices = entry.get("slices") or {}
    metric = str(entry.get("metric", ""))
    labels, values, lows, highs, colours = [], [], [], [], []
    for label, item in slices.items():
        found = (item.get("metrics") or {}).get(metric) or {}
        value = found.get("value")
        if not isinstance(value, int | float):
            continue
        low, high = (found.get("ci95") or [None, None])[:2]
        labels.append(f"{label}\n(n={item.get('rows', 0)})")
        values.append(float(value))
        lows.append(float(value) - float(low) if isinstance(low, int | float) else 0.0)
        highs.append(float(high) - float(value) if isinstance(high, int | float) else 0.0)
        colours.append("0.7" if item.get("too_small") else "C0")
    if not values:
        return None
    with figure(height=max(2.5, 0.45 * len(values) + 1.2)) as fig:
        ax = fig.add_subplot()
        positions = np.arange(len(values))
        ax.barh(positions, values, xerr=[lows, highs], color=colours, capsize=3)
        ax.set_yticks(positions, labels)
        ax.invert_yaxis()
        ax.set_title(f"{metric} by '{column}' (test split; grey: too few rows to judge)")
        ax.set_xlabel(f"{metric} with its 95% interval")
        return to_png(fig)


def feature_importance(found: dict[str, Any], limit: int = 20) -> bytes | None:
    """Permutation importance per feature (the most important first) with its interval."""
    features = (found.get("features") or [])[:limit]
    if not features:
        return None
    names = [f["name"] for f in features]
    values = np.array([f["importance"] for f in features])
    lows = values - np.array([f["ci95"][0] for f in features])
    highs = np.array([f["ci95"][1] for f in features]) - values
    with figure(height=max(2.5, 0.35 * len(names) + 1.2)) as fig:
        ax = fig.add_subplot()
        positions = np.arange(len(names))
        ax.barh(positions, values, xerr=[lows, highs], color="C0", capsize=3)
        ax.axvline(0.0, color="0.4", linewidth=0.8)
        ax.set_yticks(positions, names)
        ax.invert_yaxis()
        ax.set_title(f"Permutation importance (validation split, {found.get('repeats')} shuffles)")
        ax.set_xlabel(f"{found.get('metric')} lost when the feature is shuffled")
        return to_png(fig)


GRID_FILE = "prediction_grid.png"
GRID_PER_ROW = 8


def prediction_grid(
    images: np.ndarray, truth: np.ndarray, proba: np.ndarray, classes: list[str]
) -> bytes | None:
    """Test images in three rows: the most confident right predictions, the most confident
    wrong ones, and the most confused (the top two classes closest), each titled with the true
    and the predicted class and its probability."""
    if len(images) == 0 or proba.ndim != 2:
        return None
    predicted = proba.argmax(axis=1)
    confidence = proba.max(axis=1)
    right = np.flatnonzero(predicted == truth)
    wrong = np.flatnonzero(predicted != truth)
    top2 = np.sort(proba, axis=1)[:, -2:] if proba.shape[1] > 1 else np.zeros((len(proba), 2))
    margin = top2[:, 1] - top2[:, 0]
    groups = [
        ("most confident, right", right[np.argsort(-confidence[right])][:GRID_PER_ROW]),
        ("most confident, wrong", wrong[np.argsort(-confidence[wrong])][:GRID_PER_ROW]),
        ("most confused", np.argsort(margin)[:GRID_PER_ROW]),
    ]
    with figure(width=WIDTH * 1.6, height=6.6, layout=None) as fig:
        fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.08, hspace=0.6, wspace=0.1)
        axes = fig.subplots(3, GRID_PER_ROW)
        for r, (title, chosen) in enumerate(groups):
            axes[r][0].set_title(title, loc="left", fontsize=9, pad=14, fontweight="bold")
            for c in range(GRID_PER_ROW):
                ax = axes[r][c]
                ax.axis("off")
                if c >= len(chosen):
                    continue
                i = int(chosen[c])
                pixels = images[i]
                shown = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
                ax.imshow(shown, cmap="gray" if pixels.shape[0] == 1 else None)
                colour = "C2" if predicted[i] == truth[i] else "C3"
                ax.text(
                    0.5,
                    -0.02,
                    f"{classes[int(truth[i])]} -> {classes[int(predicted[i])]}\n"
                    f"p={confidence[i]:.2f}",
                    transform=ax.transAxes,
                    ha="center",
                    va="top",
                    fontsize=7,
                    color=colour,
                )
        fig.suptitle("Test images: true -> predicted class", fontsize=10)
        return to_png(fig)
