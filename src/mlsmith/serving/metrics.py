"""The server's Prometheus metrics, in a registry of its own (``GET /metrics``).

Requests by model, variant and status; latency, batch sizes and queue depth; the distribution of
predictions (labels counted, values in a histogram); per-feature drift (PSI) over the recent
window. With ``--workers N`` each worker process serves its own counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from prometheus_client import CollectorRegistry

# Seconds: fine below 10 ms, where a small model's answers land, coarse above.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    """Every metric the server exports; one instance per server process."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry: CollectorRegistry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mlsmith_requests",
            "Requests answered",
            ["model", "variant", "endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "mlsmith_request_latency_seconds",
            "Time from request to response, per model",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "mlsmith_batch_rows",
            "Rows per inference call",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "mlsmith_batch_requests",
            "Requests merged into one inference call",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "mlsmith_queue_depth", "Requests waiting for the predictor", ["model"], registry=r
        )
        self.labels = Counter(
            "mlsmith_predictions",
            "Predicted labels (classification)",
            ["model", "variant", "label"],
            registry=r,
        )
        self.values = Histogram(
            "mlsmith_prediction_value",
            "Predicted values (regression)",
            ["model", "variant"],
            registry=r,
        )
        self.feature_psi = Gauge(
            "mlsmith_feature_psi",
            "Population stability index of a feature over the recent "
            "window, against the training split",
            ["model", "feature"],
            registry=r,
        )
        self.prediction_psi = Gauge(
            "mlsmith_prediction_psi",
            "Population stability index of the predictions over the "
            "recent window, against the training split",
            ["model"],
            registry=r,
        )
        self.version = Gauge(
            "mlsmith_model_version",
            "The version each served variant runs (1 for the current)",
            ["model", "variant", "version"],
            registry=r,
        )
        self.shadow_failures = Counter(
            "mlsmith_shadow_failures",
            "Shadow calls that failed (never seen by clients)",
            ["model", "variant"],
            registry=r,
        )
        self.log_dropped = Counter(
            "mlsmith_prediction_log_dropped",
            "Prediction-log rows dropped because the writer fell behind",
            registry=r,
        )

    def predictions(
        self, model: str, variant: str, predictions: pd.DataFrame | np.ndarray, classified: bool
    ) -> None:
        """Count what was predicted (the prediction distribution): the output table's
        ``prediction`` column, or the predictions as an array."""
        column = (
            predictions
            if isinstance(predictions, np.ndarray)
            else predictions["prediction"].to_numpy()
        )
        if classified:
            # numpy, not pandas' value_counts: a tenth of the cost on a batch of a few rows.
            labels, counts = np.unique(column.astype(str), return_counts=True)
            for label, count in zip(labels.tolist(), counts.tolist(), strict=True):
                self.labels.labels(model, variant, label).inc(count)
        else:
            histogram = self.values.labels(model, variant)
            for value in column.astype(np.float64).tolist():
                histogram.observe(value)

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
