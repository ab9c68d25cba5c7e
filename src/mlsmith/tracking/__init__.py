"""Experiment tracking with MLflow: the only package that imports mlflow.

``tracker`` logs one run; ``store`` gets a store ready without letting concurrent or killed
processes break it.
"""

from mlsmith.tracking.tracker import Tracker, default_uri, final_metrics, run_tags

__all__ = ["Tracker", "default_uri", "final_metrics", "run_tags"]
