"""``report.html``: one self-contained page per run.

Images are PNG data URIs and the CSS is inline, so the file can be mailed, attached to an
MLflow run or opened offline; it references nothing outside itself and needs no JavaScript.
Every text from the run (config values, labels, observations) goes through ``html.escape``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape, unescape

from mlsmith.baselines import reference_name
from mlsmith.reports import evaluation_plots, facts, plots
from mlsmith.reports.runinfo import (
    NOT_RECORDED,
    RunRecord,
    format_ci,
    format_number,
    format_seconds,
    format_time,
)

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
  margin: 0; background: #f6f8fa; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 16px; margin: 18px 0 6px; }
.sub { color: #57606a; margin: 0 0 12px; }
nav { font-size: 14px; margin: 8px 0 16px; } nav a { margin-right: 14px; color: #0969da; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 16px; }
figure { margin: 0; } figure.wide { grid-column: 1 / -1; }
figure img { width: 100%; height: auto; border: 1px solid #d0d7de; border-radius: 4px; }
figure.wide img { width: auto; max-width: 100%; }
.missing { color: #57606a; font-style: italic; padding: 8px 12px; border: 1px dashed #d0d7de;
  border-radius: 4px; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; padding: 10px 14px; overflow-x: auto;
  font-size: 13px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 13px;
  font-weight: 600; color: #fff; background: #57606a; }
.finished, .pass { background: #1a7f37; } .failed, .fail { background: #cf222e; }
.interrupted, .running, .warn { background: #9a6700; } .skip { background: #6e7781; }
ul.obs li { margin: 2px 0; }
"""


@dataclass(frozen=True)
class Plot:
    """One figure of the report: its PNG (None when the data was not recorded)."""

    title: str
    png: bytes | None
    wide: bool = False


def render_html(record: RunRecord) -> str:
    """The whole report page for ``record``."""
    cfg = record.config
    info = record.info
    status = str(info.get("status", NOT_RECORDED))
    title = f"{cfg.experiment} / {record.id}"
    sections = [
        ("summary", "Summary", _summary(record)),
        ("training", "Training", _training(record)),
        ("evaluation", "Test-split evaluation", _evaluation(record)),
        ("metrics", "Metrics with confidence intervals", _metrics(record)),
        ("baseline", "Model vs baseline", _baseline(record)),
        *([("cv", "Cross-validation", _cv(record))] if record.cv else []),
        *(
            [("importance", "Feature importance", _importance(record))]
            if (record.importance or {}).get("permutation")
            else []
        ),
        *(
            [("slices", "Slices of the test split", _slices(record))]
            if record.sections.get("slices")
            else []
        ),
        ("limitations", "Measured limitations", _list(facts.measured_limitations(record))),
        ("preflight", "Pre-flight checks", _preflight(record)),
        ("data", "Data", html_table(["", ""], facts.data_rows(record), header=False)),
        ("environment", "Environment and reproducibility", _environment(record)),
        ("artifacts", "Artifacts", _artifacts(record)),
        ("config", "Configuration", f"<pre>{escape(record.config_yaml)}</pre>"),
    ]
    nav = "".join(f'<a href="#{key}">{escape(name)}</a>' for key, name, _ in sections)
    body = "\n".join(
        f'<section id="{key}"><h2>{escape(name)}</h2>\n{content}</section>'
        for key, name, content in sections
    )
    subtitle = (
        f"{_badge(status)} "
        f"{escape(str(record.task or 'task ' + NOT_RECORDED))} &middot; model "
        f"{escape(cfg.model.type)} &middot; started {escape(format_time(info.get('started')))}"
        f" &middot; wall time {escape(_wall_time(info))}"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} - mlsmith report</title><style>{CSS}</style></head>\n"
        f'<body><main><h1>{escape(title)}</h1><p class="sub">{subtitle}</p>'
        f"<nav>{nav}</nav>\n{body}\n"
        '<p class="sub">Written by mlsmith report.</p></main></body></html>\n'
    )


def image_tag(png: bytes, alt: str) -> str:
    """An ``<img>`` holding ``png`` as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


_IMAGE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)">')


def embedded_figures(html_text: str) -> list[tuple[str, bytes]]:
    """The figures a written report holds, as (title, PNG), in the report's order: what
    :func:`image_tag` wrote, read back (for trackers that show images: TensorBoard, W&B)."""
    return [(unescape(alt), base64.b64decode(data)) for data, alt in _IMAGE.findall(html_text)]


def figures(entries: list[Plot]) -> str:
    """A grid of figures; a missing one says "not recorded" in its place."""
    items = []
    for plot in entries:
        css = ' class="wide"' if plot.wide else ""
        if plot.png is None:
            inner = f'<p class="missing">{escape(plot.title)}: {NOT_RECORDED}.</p>'
        else:
            inner = image_tag(plot.png, plot.title)
        items.append(f"<figure{css}>{inner}</figure>")
    return f'<div class="figures">{"".join(items)}</div>'


def missing(what: str) -> str:
    return f'<p class="missing">{escape(what)}: {NOT_RECORDED}.</p>'


# --- sections ---------------------------------------------------------------------------------


def _summary(record: RunRecord) -> str:
    split = record.headline_split
    if split is None:
        table = missing("Metrics")
    else:
        rows = [
            (name, format_number(entry.get("value")), format_ci(entry))
            for name, entry in record.metrics[split].items()
            if name in facts.HEADLINE_METRICS
        ]
        table = f"<h3>Headline metrics ({escape(split)} split)</h3>" + html_table(
            ["metric", "value", record.ci_label], rows, numeric=(1, 2)
        )
    observations = facts.observations(record)
    notes = _list(observations) if observations else missing("Observations")
    return table + "<h3>Observations</h3>" + notes


def _training(record: RunRecord) -> str:
    history, best = record.history, record.best_epoch
    layers = plots.layer_grad_norms(record.steps)
    grid = [
        Plot("Learning curves", plots.loss_curves(history, best)),
        Plot("Learning-rate schedule", plots.lr_schedule(record.steps, history)),
        Plot(
            "Gradient norm",
            plots.grad_norms(record.steps, history, record.config.train.grad_clip),
        ),
        Plot("Training throughput", plots.throughput(history)),
        # Only where layers were sampled: trees and older runs have no such figure to miss.
        *([Plot("Gradient norm per layer", layers)] if layers is not None else []),
        Plot(
            "Validation metrics per epoch",
            plots.metric_grid(history, record.val_metric_columns(), best),
            wide=True,
        ),
    ]
    table = html_table(["", ""], facts.progress_facts(record), header=False)
    return table + figures(grid)


def _importance(record: RunRecord) -> str:
    found = (record.importance or {}).get("permutation") or {}
    chart = figures([Plot("Permutation importance", evaluation_plots.feature_importance(found))])
    gain = (record.importance or {}).get("gain")
    if not gain:
        return chart
    rows = [(name, f"{share:.3f}") for name, share in list(gain.items())[:20]]
    return (
        chart
        + "<h3>The trees' own gain (share of the total)</h3>"
        + html_table(["feature", "gain share"], rows)
    )


def _slices(record: RunRecord) -> str:
    """Per sliced column: the headline metric per slice with its interval, and the gap."""
    from mlsmith.slices import summary_lines

    sliced = record.sections.get("slices") or {}
    charts = [
        Plot(f"Slices of '{column}'", evaluation_plots.slice_chart(column, entry))
        for column, entry in sliced.items()
    ]
    return _list(summary_lines(sliced)) + figures(charts)


def _evaluation(record: RunRecord) -> str:
    predictions = record.predictions
    if record.is_classification:
        classes = record.classes
        curves = [
            Plot("Confusion matrix", _confusion_plot(record)),
            *(
                Plot(title, None if predictions is None else draw(predictions, classes))
                for title, draw in (
                    ("ROC curve", evaluation_plots.roc_curves),
                    ("Precision-recall curve", evaluation_plots.pr_curves),
                    ("Calibration curve", evaluation_plots.calibration),
                )
            ),
        ]
        grid = record.path / evaluation_plots.GRID_FILE
        if grid.is_file():
            curves.append(Plot("Test images", grid.read_bytes(), wide=True))
        return figures(curves) + "<h3>Per-class metrics (test split)</h3>" + _per_class(record)
    if record.task in ("segmentation", "detection"):
        return _scene_evaluation(record)
    if record.task == "ranking":
        target = record.config.data.target
        k = max(record.config.eval.ndcg_at)
        return figures(
            [
                Plot(
                    "Relevance by rank",
                    None
                    if predictions is None
                    else evaluation_plots.relevance_by_rank(predictions, target),
                ),
                Plot(
                    f"NDCG@{k} per query",
                    None
                    if predictions is None
                    else evaluation_plots.ndcg_per_query(predictions, k),
                ),
            ]
        )
    if record.task == "regression" or predictions is not None:
        target = record.config.data.target
        return figures(
            [
                Plot(title, None if predictions is None else draw(predictions, target))
                for title, draw in (
                    ("Predicted vs actual", evaluation_plots.predicted_vs_actual),
                    ("Residuals", evaluation_plots.residuals),
                    ("Residual distribution", evaluation_plots.residual_distribution),
                    ("Error by target range", evaluation_plots.error_by_target),
                )
            ]
        )
    return missing("Test-split predictions")


def _scene_evaluation(record: RunRecord) -> str:
    """Validation images with true and predicted boxes or masks, detection's precision-recall
    curves, and the per-class metrics of the held-out split."""
    from mlsmith.reports import scene_plots

    plots = [
        Plot(title, (record.path / name).read_bytes(), wide=wide)
        for title, name, wide in (
            ("Precision-recall curves", scene_plots.PR_FILE, False),
            ("Validation images", scene_plots.GRID_FILE, True),
        )
        if (record.path / name).is_file()
    ]
    split = "test" if "test" in record.metrics else "val"
    per_class = (record.metrics.get(split) or {}).get("per_class") or {}
    columns = list(dict.fromkeys(key for values in per_class.values() for key in values))
    table = (
        html_table(
            ["class", *columns],
            [
                (name, *(format_number(values.get(c)) for c in columns))
                for name, values in per_class.items()
            ],
            numeric=tuple(range(1, len(columns) + 1)),
        )
        if per_class
        else missing("Per-class metrics")
    )
    return (figures(plots) if plots else "") + f"<h3>Per-class metrics ({split} split)</h3>" + table


def _confusion_plot(record: RunRecord) -> bytes | None:
    """The test split's confusion matrix, else the validation split's."""
    split = "test" if "test" in record.confusion else next(iter(record.confusion), None)
    if split is None:
        return None
    entry = record.confusion[split]
    labels = [str(label) for label in entry.get("labels", [])]
    return evaluation_plots.confusion_matrix(labels, entry.get("matrix", []), split)


def _per_class(record: RunRecord) -> str:
    rows = [
        (
            c.label,
            format_number(c.precision),
            format_number(c.recall),
            format_number(c.f1),
            f"{c.support:,}",
        )
        for c in facts.per_class_metrics(record)
    ]
    if not rows:
        return missing("Test-split predictions")
    return html_table(["class", "precision", "recall", "F1", "support"], rows, numeric=(1, 2, 3, 4))


def _metrics(record: RunRecord) -> str:
    rows = facts.metric_rows(record)
    if not rows:
        return missing("Metrics")
    return html_table(["split", "metric", "value", record.ci_label], rows, numeric=(2, 3))


def _baseline(record: RunRecord) -> str:
    rows = facts.baseline_rows(record)
    text = f"<p>{escape(facts.baseline_summary(record))}</p>"
    if not rows:
        return text
    last = reference_name(record.task)
    headers = ["metric", "model", "baseline", "difference", record.ci_label, last]
    return text + html_table(headers, rows, numeric=(1, 2, 3, 4, 5))


def _cv(record: RunRecord) -> str:
    headers, rows = facts.cv_table(record)
    if not rows:
        return missing("Cross-validation results")
    return html_table(headers, rows, numeric=tuple(range(1, len(headers))))


def _preflight(record: RunRecord) -> str:
    rows = [
        (escape(group), escape(name), _badge(status), escape(detail))
        for group, name, status, detail in facts.preflight_rows(record)
    ]
    if not rows:
        return missing("Pre-flight check results")
    summary = f"<p>{escape(facts.preflight_summary(record))}.</p>"
    return summary + html_table(["group", "check", "status", "detail"], rows, raw=(0, 1, 2, 3))


def _environment(record: RunRecord) -> str:
    info = record.info
    rows = [
        ("status", str(info.get("status", NOT_RECORDED))),
        ("started", format_time(info.get("started"))),
        ("finished", format_time(info.get("finished"))),
        ("wall time", _wall_time(info)),
        ("training time", format_seconds(info.get("train_seconds"))),
        *facts.environment_rows(record),
    ]
    command = f"<p>Reproduce with:</p><pre>{escape(facts.reproduce_command(record))}</pre>"
    return html_table(["", ""], rows, header=False) + command


def _artifacts(record: RunRecord) -> str:
    rows = facts.artifact_rows(record)
    table = html_table(["file", "size"], rows, numeric=(1,)) if rows else missing("Artifacts")
    return table + "<p>This report, REPORT.md and MODEL_CARD.md are written beside them.</p>"


# --- building blocks --------------------------------------------------------------------------


def html_table(
    headers: list[str],
    rows: Sequence[Sequence[str]],
    *,
    header: bool = True,
    numeric: tuple[int, ...] = (),
    raw: tuple[int, ...] = (),
) -> str:
    """An HTML table; cells are escaped unless their column is in ``raw``."""
    head = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr>" if header else ""
    lines = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = cell if i in raw else escape(str(cell))
            tag = "th" if not header and i == 0 else "td"
            css = ' class="num"' if i in numeric else ""
            cells.append(f"<{tag}{css}>{text}</{tag}>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{head}{''.join(lines)}</table>"


def _badge(status: str) -> str:
    return f'<span class="badge {escape(status)}">{escape(status)}</span>'


def _list(items: list[str]) -> str:
    if not items:
        return "<p>None.</p>"
    return '<ul class="obs">' + "".join(f"<li>{escape(item)}</li>" for item in items) + "</ul>"


def _wall_time(info: dict[str, object]) -> str:
    started, finished = info.get("started"), info.get("finished")
    if isinstance(started, (int, float)) and isinstance(finished, (int, float)):
        return format_seconds(finished - started)
    return NOT_RECORDED
