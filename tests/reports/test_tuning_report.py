"""tune_report.html from trial records: plots present, log axes only where the space is log."""

from __future__ import annotations

from tests.reports.report_data import PNG_SIGNATURE, png_payloads

from mlsmith.reports.tuning import render_tune_report
from mlsmith.tuning import TrialRecord


def _trials() -> list[TrialRecord]:
    records = [
        TrialRecord(i, "COMPLETE", 1.0 / (i + 1), {"lr": 10.0 ** -(i + 1), "dropout": i / 10})
        for i in range(5)
    ]
    records.append(TrialRecord(5, "PRUNED", None, {"lr": 0.5, "dropout": 0.0}))
    records.append(TrialRecord(6, "FAIL", None, {"lr": 1e9}, error="loss became nan"))
    return records


def test_tune_report_has_history_importances_and_slices() -> None:
    html = render_tune_report(
        "s", "val/loss", "minimize", _trials(), {"lr": 0.8, "dropout": 0.2}, frozenset({"lr"})
    )
    payloads = png_payloads(html)
    # History, importances, one slice per parameter.
    assert len(payloads) == 4
    assert all(p.startswith(PNG_SIGNATURE) for p in payloads)
    assert "PRUNED: 1" in html and "FAIL: 1" in html and "loss became nan" in html
    assert "http://" not in html and "https://" not in html


def test_slice_axes_follow_the_search_scale() -> None:
    from mlsmith.reports.tuning import _slice_plot

    complete = [t for t in _trials() if t.state == "COMPLETE"]
    # The same values drawn on a log and on a linear axis: different pictures.
    log_png = _slice_plot(complete, "lr", "val/loss", log=True)
    linear_png = _slice_plot(complete, "lr", "val/loss", log=False)
    assert log_png is not None and linear_png is not None
    assert log_png.startswith(PNG_SIGNATURE) and linear_png.startswith(PNG_SIGNATURE)
    assert log_png != linear_png
