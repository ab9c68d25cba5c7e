"""Shared fixtures: tiny real-shaped tables, config files, and an in-process CLI runner."""

from __future__ import annotations

import os

# Set before torch loads OpenMP (and inherited by the CLI processes tests start): with two
# xdist workers on two cores, OpenMP threads that spin while waiting for a core slowed torch
# tests 2.5-4x; passive threads sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml


def make_table(kind: str = "binary", rows: int = 240, seed: int = 0) -> pd.DataFrame:
    """A small table with a learnable signal, numeric and categorical columns, and gaps.

    ``kind`` is ``binary``, ``multiclass`` or ``regression``.
    """
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=rows)
    x2 = rng.normal(size=rows)
    color = rng.choice(["red", "green", "blue"], size=rows)
    signal = 1.5 * x1 - x2 + np.where(color == "red", 1.0, 0.0)
    frame = pd.DataFrame(
        {
            "x1": x1,
            "x2": x2,
            "size": rng.integers(1, 100, size=rows).astype(float),
            "color": color,
        }
    )
    frame.loc[rng.random(rows) < 0.05, "x2"] = np.nan
    if kind == "binary":
        frame["label"] = np.where(signal + rng.normal(scale=0.5, size=rows) > 0, "yes", "no")
    elif kind == "multiclass":
        frame["label"] = pd.cut(signal, [-np.inf, -1.0, 1.0, np.inf], labels=["lo", "mid", "hi"])
        frame["label"] = frame["label"].astype(str)
    elif kind == "regression":
        frame["label"] = 10.0 + 3.0 * signal + rng.normal(scale=0.3, size=rows)
    else:
        raise ValueError(kind)
    return frame


@pytest.fixture
def table_csv(tmp_path: Path) -> Callable[..., Path]:
    """Write ``make_table(kind, rows)`` to a CSV under tmp_path and return its path."""

    def write(kind: str = "binary", rows: int = 240, name: str | None = None) -> Path:
        path = tmp_path / (name or f"{kind}.csv")
        make_table(kind, rows).to_csv(path, index=False)
        return path

    return write


def config_dict(data_path: Path | str, output_dir: Path, **sections: Any) -> dict[str, Any]:
    """A fast config: tiny model, few epochs, tracking, reports and the package off unless a
    section turns them on."""
    config: dict[str, Any] = {
        "experiment": "t",
        "seed": 0,
        "output_dir": str(output_dir),
        "data": {"path": str(data_path), "target": "label"},
        "model": {"type": "mlp", "hidden": [16], "dropout": 0.0},
        "train": {"epochs": 3, "batch_size": 32},
        "track": {"enabled": False},
        # Reports cost seconds of matplotlib per run; tests/reports turns them on. The baseline
        # (a second model and its paired bootstrap) is tested in tests/test_baselines.py.
        "eval": {"bootstrap": 200, "report": False, "baseline": False},
        # Exporting and verifying a package costs seconds per run; tests/export turns it on.
        "export": {"package": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a fast config (see :func:`config_dict`) for ``data_path`` and return its path."""

    def write(data_path: Path | str, name: str = "config.yaml", **sections: Any) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config_dict(data_path, tmp_path / "runs", **sections)))
        return path

    return write


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``mlsmith ARGS...`` in this process; returns exit code, stdout and stderr."""
    from mlsmith.cli import main

    def invoke(*args: str | Path) -> CliResult:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        code = exit_info.value.code
        return CliResult(code if isinstance(code, int) else 1, out, err)

    return invoke
