"""The plot functions on small frames: PNG out for data, None (never an error) without it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from tests.reports.report_data import PNG_SIGNATURE

from mlsmith.reports import evaluation_plots, plots
from mlsmith.reports.runinfo import format_bytes, format_ci, format_number, format_value


def history(epochs: int = 4) -> pd.DataFrame:
    epoch = np.arange(1, epochs + 1)
    return pd.DataFrame(
        {
            "epoch": epoch,
            "train/loss": 1.0 / epoch,
            "val/loss": 1.2 / epoch,
            "val/accuracy": 0.5 + epoch / 20,
            "lr": 1e-3 / epoch,
            "samples_per_s": 1000.0 + epoch,
            "grad_norm": 2.0 / epoch,
            "grad_norm_max": 3.0 / epoch,
        }
    )


def classified(classes: list[str], rows: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(len(classes)), size=rows)
    frame = pd.DataFrame({"target": rng.choice(classes, size=rows)})
    frame["prediction"] = np.asarray(classes)[proba.argmax(axis=1)]
    for i, label in enumerate(classes):
        frame[f"proba_{label}"] = proba[:, i]
    return frame


def is_png(data: bytes | None) -> bool:
    return data is not None and data.startswith(PNG_SIGNATURE)


def test_training_plots_draw_and_skip_missing_data() -> None:
    frame = history()
    assert is_png(plots.loss_curves(frame, best_epoch=4))
    assert is_png(plots.metric_grid(frame, ["val/accuracy"], best_epoch=None))
    assert is_png(plots.lr_schedule(None, frame))
    assert is_png(plots.grad_norms(None, frame, clip=1.0))
    assert is_png(plots.throughput(frame))
    for draw in (
        lambda h: plots.loss_curves(h, None),
        lambda h: plots.metric_grid(h, [], None),
        lambda h: plots.lr_schedule(None, h),
        lambda h: plots.grad_norms(None, h, None),
        plots.throughput,
    ):
        assert draw(None) is None
        assert draw(frame[["epoch"]]) is None  # an older run without these columns


def test_steps_are_preferred_for_lr_and_gradients() -> None:
    steps = pd.DataFrame(
        {"step": np.arange(1, 201), "lr": np.linspace(1e-5, 1e-3, 200), "grad_norm": 1.0}
    )
    from_steps = plots.lr_schedule(steps, history())
    assert is_png(from_steps) and from_steps != plots.lr_schedule(None, history())
    assert is_png(plots.grad_norms(steps, None, clip=None))
    all_nan = steps.assign(grad_norm=np.nan)
    assert plots.grad_norms(all_nan, None, clip=None) is None


@pytest.mark.parametrize("classes", [["no", "yes"], ["a", "b", "c"], [str(i) for i in range(12)]])
def test_classification_plots(classes: list[str]) -> None:
    frame = classified(classes)
    assert is_png(evaluation_plots.roc_curves(frame, classes))
    assert is_png(evaluation_plots.pr_curves(frame, classes))
    assert is_png(evaluation_plots.calibration(frame, classes))
    matrix = np.ones((len(classes), len(classes)), dtype=int).tolist()
    assert is_png(evaluation_plots.confusion_matrix(classes, matrix, "test"))


def test_classification_plots_without_a_curve() -> None:
    frame = classified(["no", "yes"]).assign(target="yes")  # no negatives: no ROC curve
    assert evaluation_plots.roc_curves(frame, ["no", "yes"]) is None
    assert evaluation_plots.confusion_matrix(["a"], [[1, 2]], "test") is None


def test_regression_plots() -> None:
    rng = np.random.default_rng(0)
    target = rng.normal(size=50)
    frame = pd.DataFrame({"target": target, "prediction": target + rng.normal(size=50)})
    for draw in (
        evaluation_plots.predicted_vs_actual,
        evaluation_plots.residuals,
        evaluation_plots.residual_distribution,
        evaluation_plots.error_by_target,
    ):
        assert is_png(draw(frame, "price"))
        assert draw(frame.assign(target=np.nan), "price") is None


def test_plots_never_load_pyplot() -> None:
    # pyplot keeps global figures and picks a GUI backend; the reports must not need it.
    code = (
        "import sys, pandas as pd\n"
        "from mlsmith.reports import plots\n"
        "frame = pd.DataFrame({'epoch': [1, 2], 'train/loss': [1.0, 0.5]})\n"
        "assert plots.loss_curves(frame, 2)\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_formatting() -> None:
    assert format_number(0.94736) == "0.9474"
    assert format_number(2916.4) == "2,916.4"
    assert format_number(0.00012) == "0.00012"
    assert format_number(None) == "-" and format_number(float("nan")) == "-"
    assert format_ci({"value": 0.9, "ci95": [0.85, 0.95]}) == "[0.8500, 0.9500]"
    assert format_ci({"value": 0.9, "ci95": [None, None]}) == "-" and format_ci(None) == "-"
    assert format_value(3e-4) == "0.0003" and format_value(True) == "true"
    assert format_value([256, 128]) == "[256, 128]" and format_value(None) == "none"
    assert format_bytes(512) == "512 B" and format_bytes(5 * 1024**2) == "5.0 MB"
