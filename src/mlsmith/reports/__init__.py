"""Run reports: ``report.html``, ``REPORT.md`` and ``MODEL_CARD.md``, and run comparisons.

Reports are read-only views of a run directory: they are rebuilt from its files at any time
(``mlsmith report RUN_DIR``), work on old, interrupted and test-less runs (a missing piece says
"not recorded"), and never need the data or the model again (only the parameter count opens the
best checkpoint).
"""

from __future__ import annotations

import logging
from pathlib import Path

from mlsmith.files import atomic_path

__all__ = ["report_figures", "write_reports", "write_reports_safely"]

log = logging.getLogger(__name__)


def write_reports(run_dir: str | Path) -> list[Path]:
    """Write the three reports into ``run_dir``, each atomically; returns their paths.

    Raises :class:`mlsmith.errors.RunError` when ``run_dir`` is not a run directory.
    """
    from mlsmith.reports.card import render_card
    from mlsmith.reports.forecast import is_forecasting_run
    from mlsmith.reports.html import render_html
    from mlsmith.reports.markdown import render_report
    from mlsmith.reports.runinfo import HTML_REPORT, MARKDOWN_REPORT, MODEL_CARD, load_record

    if is_forecasting_run(Path(run_dir)):
        return _write_forecast_reports(Path(run_dir))
    record = load_record(run_dir)
    written = []
    for name, render in (
        (HTML_REPORT, render_html),
        (MARKDOWN_REPORT, render_report),
        (MODEL_CARD, render_card),
    ):
        path = record.path / name
        text = render(record)
        with atomic_path(path) as tmp:
            # UTF-8 whatever the locale: labels and card text may be in any language.
            tmp.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def write_reports_safely(run_dir: Path) -> list[Path]:
    """The run's reports; a failure here must not fail a run whose results are already saved."""
    try:
        paths = write_reports(run_dir)
    except Exception as error:  # a report bug must never cost the user the run
        log.warning(
            "could not write the run report (%s: %s); retry with `mlsmith report %s`",
            type(error).__name__,
            error,
            run_dir,
        )
        return []
    log.info("report: %s", paths[0])
    return paths


def report_figures(report: Path) -> list[tuple[str, bytes]]:
    """The figures of a written ``report.html`` as (title, PNG), for the trackers that show
    images; none when it cannot be read (a tracker is never worth failing a run for)."""
    from mlsmith.reports.html import embedded_figures

    try:
        return embedded_figures(report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        log.warning("could not read the report's figures from %s: %s", report, error)
        return []


def _write_forecast_reports(run_dir: Path) -> list[Path]:
    """A forecasting run's ``report.html`` and ``REPORT.md`` (see :mod:`.forecast`)."""
    from mlsmith.reports.forecast import (
        load_forecast_record,
        render_forecast_html,
        render_forecast_markdown,
    )
    from mlsmith.reports.runinfo import HTML_REPORT, MARKDOWN_REPORT

    record = load_forecast_record(run_dir)
    written = []
    for name, render in (
        (HTML_REPORT, render_forecast_html),
        (MARKDOWN_REPORT, render_forecast_markdown),
    ):
        path = run_dir / name
        text = render(record)
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        written.append(path)
    return written
