"""The run directory's record of the environment: code, libraries, hardware."""

from __future__ import annotations

from mlsmith.config import load_config
from mlsmith.run import capture_environment


def test_the_environment_names_every_library_that_shaped_the_run() -> None:
    import optuna  # a tuning trial's process has it loaded  # noqa: F401

    trees = load_config(
        {"data": {"path": "sklearn:iris", "target": "target"}, "model": {"type": "lightgbm"}}
    )
    packages = capture_environment("cpu", trees)["packages"]
    assert {"torch", "numpy", "pandas", "scikit-learn", "lightgbm", "optuna"} <= set(packages)
    assert "xgboost" not in packages and "tokenizers" not in packages

    text = load_config({"data": {"type": "text", "path": "t.csv", "target": "y"}})
    assert "tokenizers" in capture_environment("cpu", text)["packages"]
    images = load_config({"data": {"type": "image", "path": "imgs"}})
    assert {"torchvision", "pillow"} <= set(capture_environment("cpu", images)["packages"])
    assert "cuda" not in capture_environment("cpu", images)["packages"]  # only on a GPU
