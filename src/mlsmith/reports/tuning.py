"""``tune_report.html``: one self-contained page per study.

Optimization history (each trial's value and the best so far), parameter importances and one
slice plot per parameter (value against the sampled value). Plain data in (no optuna here);
plots are matplotlib Figures rendered by the Agg canvas and embedded as base64 PNGs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from mlsmith.reports import plots
from mlsmith.reports.html import CSS, image_tag

if TYPE_CHECKING:
    from mlsmith.tuning import TrialRecord

MAX_SLICES = 6


def render_tune_report(
    study: str,
    metric: str,
    direction: str,
    trials: Sequence[TrialRecord],
    importances: dict[str, float],
    log_params: frozenset[str] = frozenset(),
) -> str:
    """The study's HTML page; ``log_params`` are the space keys searched on a log scale."""
    complete = [t for t in trials if t.state == "COMPLETE" and t.value is not None]
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    sections = [
        f"<h1>Study {escape(study)}</h1>",
        f'<p class="sub">{escape(direction)} {escape(metric)} &middot; '
        + ", ".join(f"{escape(k)}: {v}" for k, v in sorted(counts.items()))
        + "</p>",
    ]
    figures = []
    history = _history_plot(complete, metric, direction)
    if history:
        figures.append(_figure("Optimization history", history))
    if importances:
        figures.append(_figure("Parameter importances", _importance_plot(importances)))
    names = list(importances) or sorted({k for t in complete for k in t.params})
    for name in names[:MAX_SLICES]:
        png = _slice_plot(complete, name, metric, log=name in log_params)
        if png:
            figures.append(_figure(f"Slice: {name}", png))
    if figures:
        sections.append('<h2>Plots</h2><div class="figures">' + "".join(figures) + "</div>")
    else:
        sections.append('<p class="missing">no completed trials yet: nothing to plot</p>')
    sections.append("<h2>Trials</h2>" + _table(trials))
    body = "\n".join(sections)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>tune {escape(study)}</title><style>{CSS}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )


def _figure(title: str, png: bytes) -> str:
    return f"<figure><h3>{escape(title)}</h3>{image_tag(png, title)}</figure>"


def _history_plot(complete: Sequence[TrialRecord], metric: str, direction: str) -> bytes | None:
    if not complete:
        return None
    numbers = [t.number for t in complete]
    values = [float(t.value or 0.0) for t in complete]
    best, running = [], math.inf if direction == "minimize" else -math.inf
    for v in values:
        running = min(running, v) if direction == "minimize" else max(running, v)
        best.append(running)
    with plots.figure() as fig:
        ax = fig.add_subplot()
        ax.scatter(numbers, values, s=18, label="trial", color="#0969da")
        ax.step(numbers, best, where="post", color="#cf222e", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel(metric)
        plots.legend(ax)
        return plots.to_png(fig)


def _importance_plot(importances: dict[str, float]) -> bytes:
    names = list(importances)[::-1]
    with plots.figure(height=max(2.0, 0.5 * len(names) + 1.0)) as fig:
        ax = fig.add_subplot()
        ax.barh(names, [importances[n] for n in names], color="#0969da")
        ax.set_xlabel("importance (fANOVA)")
        return plots.to_png(fig)


def _slice_plot(
    complete: Sequence[TrialRecord], name: str, metric: str, *, log: bool
) -> bytes | None:
    points = [(t.params[name], float(t.value or 0.0)) for t in complete if name in t.params]
    if not points:
        return None
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in points)
    with plots.figure(width=4.8, height=3.4) as fig:
        ax = fig.add_subplot()
        if numeric:
            xs = [float(x) for x, _ in points]
            ax.scatter(xs, [v for _, v in points], s=18, color="#0969da")
            if log:  # the axis the space was searched on
                ax.set_xscale("log")
        else:
            labels = sorted({json.dumps(x) for x, _ in points})
            ax.scatter(
                [labels.index(json.dumps(x)) for x, _ in points],
                [v for _, v in points],
                s=18,
                color="#0969da",
            )
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
        return plots.to_png(fig)


def _table(trials: Sequence[TrialRecord]) -> str:
    rows = []
    for t in trials:
        value = "" if t.value is None else f"{t.value:.6g}"
        params = ", ".join(f"{k}={_short(v)}" for k, v in t.params.items())
        rows.append(
            f"<tr><td class=num>{t.number}</td><td>{escape(t.state)}</td>"
            f"<td class=num>{value}</td><td>{escape(params)}</td>"
            f"<td>{escape(t.error or '')}</td></tr>"
        )
    head = "<tr><th>trial</th><th>state</th><th>value</th><th>params</th><th>error</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value)
