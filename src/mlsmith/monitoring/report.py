"""The monitor's HTML report: one self-contained page, like a run's ``report.html``.

The verdict and its reasons, the PSI of every feature against the threshold, the training and
logged shares of each drifted feature and of the predictions, and live performance against the
held-out metrics. PNGs are inlined, CSS is the run report's; every text goes through
``html.escape``. Written atomically: a reader sees the previous report or the new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.files import write_text
from mlsmith.reports.html import CSS, html_table, image_tag
from mlsmith.reports.plots import figure, to_png

if TYPE_CHECKING:
    from mlsmith.monitoring.drift import FeatureDrift
    from mlsmith.monitoring.monitor import MonitorResult

# Share plots for at most this many features (the drifted ones, largest PSI first).
MAX_SHARE_PLOTS = 8


def write_report(result: MonitorResult, output: str | Path) -> Path:
    """Write the report of ``result`` to ``output``; its path."""
    path = Path(output)
    write_text(path, render(result))
    return path


def render(result: MonitorResult) -> str:
    """The whole page."""
    verdict = "drift" if result.exit_code else "stable"
    badge = f'<span class="badge {"fail" if result.exit_code else "pass"}">{verdict}</span>'
    reasons = result.reasons or ["no threshold passed"]
    thresholds = result.config
    summary = html_table(
        ["", ""],
        [
            ("package", result.package),
            ("log", result.log_dir),
            ("rows judged", f"{result.rows:,}"),
            ("from", result.first or "-"),
            ("to", result.last or "-"),
            (
                "thresholds",
                f"PSI > {thresholds.psi_threshold:g} and p < {thresholds.p_value:g}, at least "
                f"{thresholds.min_rows} rows; metric drop > {thresholds.max_metric_drop:g}",
            ),
        ],
        header=False,
    )
    parts = [
        f"<h1>Monitoring {badge}</h1>",
        f'<p class="sub">{escape(result.package)}</p>',
        _list(reasons + result.notes),
        summary,
        "<h2>Feature drift</h2>",
        _features(result),
        "<h2>Prediction drift</h2>",
        _prediction(result),
        "<h2>Live performance</h2>",
        _performance(result),
    ]
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>mlsmith monitor: {escape(verdict)}</title><style>{CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def _features(result: MonitorResult) -> str:
    if not result.features:
        return "<p>No per-feature statistics for this package.</p>"
    ordered = sorted(result.features, key=lambda f: (not f.drifted, -_number(f.psi)))
    rows = [
        (f.name, f.type, _fmt(f.psi), f.test, _fmt(f.p_value), "yes" if f.drifted else "no")
        for f in ordered
    ]
    table = html_table(
        ["feature", "type", "PSI", "test", "p-value", "drifted"], rows, numeric=(2, 4)
    )
    plots = [image_tag(_psi_plot(result.features, result.config.psi_threshold), "PSI")]
    for feature in [f for f in ordered if f.drifted][:MAX_SHARE_PLOTS]:
        plots.append(image_tag(_shares_plot(feature), f"shares of {feature.name}"))
    return table + _figures(plots)


def _prediction(result: MonitorResult) -> str:
    p = result.prediction
    if p is None:
        return "<p>No prediction distribution was compared.</p>"
    table = html_table(
        ["PSI", "test", "p-value", "drifted"],
        [(_fmt(p.psi), p.test, _fmt(p.p_value), "yes" if p.drifted else "no")],
        numeric=(0, 2),
    )
    return table + _figures([image_tag(_shares_plot(p), "prediction shares")])


def _performance(result: MonitorResult) -> str:
    perf = result.performance
    if perf is None:
        return "<p>No labels given (<code>--labels FILE</code>).</p>"
    split = perf.held_out_split or "held-out"
    rows = []
    for name, entry in perf.metrics.items():
        held = perf.held_out.get(name, {})
        rows.append(
            (name, _fmt(entry.get("value")), _ci(entry), _fmt(held.get("value")), _ci(held))
        )
    head = ["metric", "live", "live 95% CI", split, f"{split} 95% CI"]
    text = (
        f"<p>{perf.rows:,} labelled rows"
        + (f" ({perf.unmatched:,} labels matched no logged row)" if perf.unmatched else "")
        + f"; {escape(perf.headline)} "
        + ("degraded" if perf.degraded else "judged stable" if perf.judged else "not judged")
        + ".</p>"
    )
    out = text + html_table(head, rows, numeric=(1, 3))
    if perf.by_variant:
        variant_rows = [
            (name, f"{v['rows']:,}", _fmt(v.get(perf.headline)))
            for name, v in perf.by_variant.items()
        ]
        out += html_table(["variant", "rows", perf.headline], variant_rows, numeric=(1, 2))
    return out


def _psi_plot(features: Sequence[FeatureDrift], threshold: float) -> bytes:
    names = [f.name for f in features]
    values = [_number(f.psi) for f in features]
    with figure(6.4, max(2.0, 0.3 * len(names) + 1.0)) as fig:
        ax = fig.add_subplot()
        colors = ["#cf222e" if f.drifted else "#0969da" for f in features]
        ax.barh(np.arange(len(names)), values, color=colors)
        ax.set_yticks(np.arange(len(names)), names)
        ax.invert_yaxis()
        ax.axvline(threshold, color="#57606a", linestyle="--", label=f"threshold {threshold:g}")
        ax.set_xlabel("PSI against the training split")
        ax.set_title("Drift per feature")
        ax.legend(loc="lower right")
        return to_png(fig)


def _shares_plot(feature: FeatureDrift) -> bytes:
    x = np.arange(len(feature.labels))
    with figure(6.4, 3.6) as fig:
        ax = fig.add_subplot()
        ax.bar(x - 0.2, feature.expected, width=0.4, label="training", color="#0969da")
        ax.bar(x + 0.2, feature.actual, width=0.4, label="logged", color="#cf222e")
        ax.set_xticks(x, [_short(label) for label in feature.labels], rotation=45, ha="right")
        ax.set_ylabel("share of rows")
        ax.set_title(f"{feature.name}: PSI {_fmt(feature.psi)}")
        ax.legend()
        return to_png(fig)


def _figures(images: list[str]) -> str:
    return '<div class="figures">' + "".join(f"<figure>{i}</figure>" for i in images) + "</div>"


def _list(items: list[str]) -> str:
    return '<ul class="obs">' + "".join(f"<li>{escape(item)}</li>" for item in items) + "</ul>"


def _number(value: float | None) -> float:
    return 0.0 if value is None or not np.isfinite(value) else float(value)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if isinstance(value, float) and 0 < abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _ci(entry: dict[str, Any]) -> str:
    low, high = entry.get("ci95") or (None, None)
    return "-" if low is None or high is None else f"[{_fmt(low)}, {_fmt(high)}]"


def _short(label: str, width: int = 18) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"
