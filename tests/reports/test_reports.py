"""report.html, REPORT.md and MODEL_CARD.md written from real runs of every task."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from tests.conftest import CliResult
from tests.reports.report_data import CARD, PNG_SIGNATURE, png_payloads

import mlsmith
from mlsmith.reports import write_reports
from mlsmith.reports.html import embedded_figures
from mlsmith.reports.runinfo import count_parameters, format_ci, load_record

# Training plots (loss, LR, gradient norm, throughput, validation metrics) + test-split plots.
# Training curves + evaluation plots, then one more: the permutation importance of a tabular
# run, or an image run's grid of test images.
# Training (6, the per-layer gradient norms included) + evaluation (4) + importance or images.
IMAGES = {
    "binary": 6 + 4 + 1,
    "multiclass": 6 + 4 + 1,
    "regression": 6 + 4 + 1,
    "image": 6 + 4 + 1,
    "text": 6 + 4,
}
RUNS = {
    "binary": "binary_run",
    "multiclass": "multiclass_run",
    "regression": "regression_run",
    "image": "image_run",
    "text": "text_run",
}


@pytest.fixture(scope="module", params=list(RUNS))
def written(request: pytest.FixtureRequest) -> tuple[str, Path, dict[str, str]]:
    """(kind, run dir, {file name: text}) after writing the reports of one session run.

    Written once per kind; the tests only read them.
    """
    run_dir: Path = request.getfixturevalue(RUNS[request.param])
    paths = write_reports(run_dir)
    assert [p.name for p in paths] == ["report.html", "REPORT.md", "MODEL_CARD.md"]
    assert all(p.parent == run_dir for p in paths)
    return request.param, run_dir, {p.name: p.read_text(encoding="utf-8") for p in paths}


def test_html_is_self_contained_with_every_plot(written: tuple[str, Path, dict[str, str]]) -> None:
    kind, run_dir, texts = written
    html = texts["report.html"]
    images = png_payloads(html)
    assert len(images) == html.count("<img") == IMAGES[kind]
    assert all(image.startswith(PNG_SIGNATURE) for image in images)
    # What the trackers that show images get: the same figures, titled, in the same order.
    figures = embedded_figures(html)
    assert [png for _, png in figures] == images
    assert figures[0][0] == "Learning curves" and "Gradient norm per layer" in dict(figures)
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html
    for heading in ("Summary", "Training", "Test-split evaluation", "Environment", "Artifacts"):
        assert f"<h2>{heading}" in html
    # The config itself is shown, and so is the data summary.
    assert "train:" in html and "optimizer:" in html and run_dir.name in html
    assert "data fingerprint" in html and "wall time" in html
    if kind == "regression":
        assert "Predicted vs actual" in html and "Error by target range" in html
    else:
        assert "Per-class metrics" in html


def test_metrics_and_intervals_in_every_report(written: tuple[str, Path, dict[str, str]]) -> None:
    kind, run_dir, texts = written
    metrics = json.loads((run_dir / "metrics.json").read_text())
    names = ["rmse", "r2"] if kind == "regression" else ["accuracy", "roc_auc"]
    for name in names:
        ci = format_ci(metrics["test"][name])
        assert ci.startswith("[") and ci != "-"
        assert f"| test | {name} |" in texts["REPORT.md"] and ci in texts["REPORT.md"]
        assert ci in texts["report.html"] and ci in texts["MODEL_CARD.md"]


def test_markdown_report_sections(written: tuple[str, Path, dict[str, str]]) -> None:
    _, run_dir, texts = written
    report = texts["REPORT.md"]
    for heading in (
        "## Configuration summary",
        "## Training progress",
        "### Observations",
        "## Final metrics",
        "## Artifacts",
        "## Reproducibility",
    ):
        assert heading in report
    assert f"mlsmith train {run_dir}/config.yaml" in report
    assert "| best epoch |" in report and "| train/val gap at best epoch |" in report
    assert "| checkpoints/best.pt |" in report and "| history.csv |" in report
    info = json.loads((run_dir / "run.json").read_text())
    assert info["data_fingerprint"] in report
    assert "| deterministic | no |" in report and "| seed | 0 |" in report


def test_model_card(written: tuple[str, Path, dict[str, str]]) -> None:
    kind, run_dir, texts = written
    card = texts["MODEL_CARD.md"]
    for heading in ("## Model details", "## Intended use", "## Training data", "## Evaluation"):
        assert heading in card
    assert "## Limitations" in card and "## Ethical considerations" in card
    parameters = count_parameters(run_dir)
    assert parameters and f"| parameters | {parameters:,} (checkpoints/best.pt) |" in card
    if kind == "binary":
        assert CARD["description"] in card and CARD["intended_use"] in card
        assert "Owners: ml-platform team" in card and "License: Apache-2.0" in card
    else:
        assert "Description: not stated." in card and "- Owners: not stated" in card
    assert "## Ethical considerations\n\nNot stated." in card
    if kind == "regression":
        assert "Per-class" not in card and "(fifth " in card and "of 5 by true value)" in card
    else:
        assert "### Per-class metrics (test split)" in card and "Weakest class" in card


def test_parameter_count_matches_the_network(binary_run: Path) -> None:
    model = mlsmith.load_run(binary_run).model
    expected = sum(p.numel() for p in model.network.parameters())  # type: ignore[attr-defined]
    assert count_parameters(binary_run) == expected


def test_per_class_metrics_match_the_predictions(multiclass_run: Path) -> None:
    from mlsmith.reports.facts import per_class_metrics

    record = load_record(multiclass_run)
    rows = per_class_metrics(record)
    predictions = pd.read_csv(multiclass_run / "test_predictions.csv")
    assert sorted(r.label for r in rows) == ["hi", "lo", "mid"]
    assert sum(r.support for r in rows) == len(predictions)
    for row in rows:
        truth = predictions["target"] == row.label
        hits = truth & (predictions["prediction"] == row.label)
        assert row.recall == pytest.approx(hits.sum() / truth.sum())


def test_missing_files_say_not_recorded(binary_run: Path, run_copy: Callable[[Path], Path]) -> None:
    run_dir = run_copy(binary_run)
    for name in (
        "history.csv",
        "steps.csv",
        "test_predictions.csv",
        "confusion_matrix.json",
        "importance.json",
    ):
        (run_dir / name).unlink(missing_ok=True)
    # An old or interrupted run: run.json without timings, results or environment.
    (run_dir / "run.json").write_text(json.dumps({"id": run_dir.name, "status": "interrupted"}))
    html, report, card = (p.read_text() for p in write_reports(run_dir))
    assert png_payloads(html) == []
    assert "Learning curves: not recorded." in html and "ROC curve: not recorded." in html
    assert "Test-split predictions: not recorded." in html
    assert "| best epoch | not recorded |" in report and "| mlsmith | not recorded |" in report
    assert "interrupted" in report
    assert "Test-split predictions: not recorded." in card


def test_run_without_test_metrics_reports_validation(
    regression_run: Path, run_copy: Callable[[Path], Path]
) -> None:
    run_dir = run_copy(regression_run)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({"val": metrics["val"]}))
    (run_dir / "test_predictions.csv").unlink()
    (run_dir / "metrics.json").with_name("history.csv").unlink()
    html, report, card = (p.read_text() for p in write_reports(run_dir))
    assert "Headline metrics (val split)" in html and "| val | rmse |" in report
    assert "no held-out test split" in card and "Predicted vs actual: not recorded." in html


def test_only_a_config_is_still_a_report(tmp_path: Path, binary_run: Path) -> None:
    run_dir = tmp_path / "bare"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text((binary_run / "config.yaml").read_text())
    html, report, card = (p.read_text() for p in write_reports(run_dir))
    assert "Metrics: not recorded." in html and "Metrics: not recorded." in report
    assert "| parameters | not recorded |" in card


def test_cli_report(cli: Callable[..., CliResult], binary_run: Path, tmp_path: Path) -> None:
    result = cli("report", binary_run)
    assert result.code == 0, result.stderr
    assert result.stdout.split() == [
        str(binary_run / name) for name in ("report.html", "REPORT.md", "MODEL_CARD.md")
    ]
    not_a_run = cli("report", tmp_path)
    assert not_a_run.code == 2 and "not a run directory" in not_a_run.stderr
    assert "Traceback" not in not_a_run.stderr
    missing = cli("report", tmp_path / "nowhere")
    assert missing.code == 2 and "run directory not found" in missing.stderr


def test_report_is_logged_to_the_mlflow_run(tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from tests.reports.report_data import train_tabular

    run_dir = train_tabular(tmp_path, "binary", track={"enabled": True}, train={"epochs": 1})
    paths = mlsmith.report(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    logged = {artifact.path for artifact in client.list_artifacts(info["mlflow_run_id"])}
    assert {p.name for p in paths} <= logged
