"""Shared fixtures: tiny real-shaped tables, config files, and an in-process CLI runner."""

from __future__ import annotations

import os

# Set before torch loads OpenMP (and inherited by the CLI processes tests start): with two
# xdist workers on two cores, OpenMP threads that spin while waiting for a core slowed torch
# tests 2.5-4x; passive threads sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import shutil
import subprocess
import sys
import venv
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
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


# --- a virtual environment without torch or mlsmith, for what packages need at inference -------


def inference_requirements() -> list[str]:
    """What the shared inference venv is built from: the requirements a package can have (every
    data kind and engine, and the scene packages), pinned to this environment's versions as the
    packages pin them; pyarrow (Spark's executors); sqlalchemy and alembic (MLflow's client
    reading a SQLite registry)."""
    from mlsmith.packaging.scenes import REQUIREMENTS
    from mlsmith.packaging.writer import installed_version, requirements

    pins = {
        line
        for kind in ("tabular", "text", "image")
        for engine in ("onnx", "lightgbm", "xgboost")
        for line in requirements(kind, engine)
    }
    names = (*REQUIREMENTS, "pyarrow", "sqlalchemy", "alembic")
    return sorted(pins | {f"{name}=={installed_version(name)}" for name in names})


def _site_packages(env: Path) -> Path:
    return env / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


@dataclass(frozen=True)
class InferenceVenv:
    """A venv (no pip, no torch, no mlsmith) built once per test session from
    ``requirements``; :meth:`holding` makes venvs holding only some of its distributions."""

    root: Path
    requirements: tuple[str, ...]

    def holding(self, requirements: Iterable[str], directory: Path) -> Path:
        """A new venv at ``directory`` (without system site-packages) holding exactly the
        distributions ``requirements`` need, their dependencies included, linked file by file
        from this venv: what ``pip install`` of them alone would leave. Every requirement must
        be met by a version this venv was built from. Returns the new venv's Python."""
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name

        site = _site_packages(self.root)
        installed = {
            canonicalize_name(d.metadata["Name"]): d
            for d in metadata.distributions(path=[str(site)])
        }
        pins = (r.partition("==") for r in self.requirements)
        built = {canonicalize_name(name): version for name, _, version in pins}
        wanted: dict[str, set[str]] = {}
        todo = [Requirement(line) for line in requirements]
        for requirement in todo:
            version = built.get(canonicalize_name(requirement.name))
            assert version is not None and requirement.specifier.contains(version), (
                f"{requirement} is not among what the venv was built from: {self.requirements}"
            )
        while todo:
            requirement = todo.pop()
            name = canonicalize_name(requirement.name)
            if name in wanted and set(requirement.extras) <= wanted[name]:
                continue
            extras = wanted.setdefault(name, set())
            extras |= set(requirement.extras)
            assert name in installed, f"{name} ({requirement}) is not installed in {site}"
            for line in installed[name].requires or ():
                dependency = Requirement(line)
                marker = dependency.marker
                if marker is None or any(marker.evaluate({"extra": e}) for e in extras | {""}):
                    todo.append(dependency)
        venv.EnvBuilder(with_pip=False).create(directory)
        target = _site_packages(directory)
        owners: dict[str, set[str]] = {}  # a top-level name in site-packages -> its distributions
        for name, distribution in installed.items():
            for file in distribution.files or ():
                if ".." not in file.parts:  # not a script in bin/
                    owners.setdefault(file.parts[0], set()).add(name)
        for top, names in owners.items():
            if top == "__pycache__" or not names & wanted.keys():
                continue
            if names <= wanted.keys():  # the whole folder or module: bytecode written is shared
                (target / top).symlink_to(site / top)
                continue
            for name in names & wanted.keys():  # a namespace shared with unwanted distributions
                for file in installed[name].files or ():
                    link = target / file
                    if file.parts[0] == top and (site / file).exists() and not link.exists():
                        link.parent.mkdir(parents=True, exist_ok=True)
                        link.symlink_to(site / file)
        return directory / "bin" / "python"


@pytest.fixture(scope="session")
def inference_venv(tmp_path_factory: pytest.TempPathFactory) -> InferenceVenv:
    """:func:`inference_requirements` installed (without bytecode, which costs much of an
    install's time) in a new venv, once per test session: pytest-xdist's workers share the
    parent of their base temporary folders, and a file lock lets one of them build it."""
    from filelock import FileLock

    requirements = inference_requirements()
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    directory = root / "inference-venv"
    built = root / "inference-venv.json"
    with FileLock(str(root / "inference-venv.lock")):
        if not built.is_file():
            shutil.rmtree(directory, ignore_errors=True)  # a build that failed part-way
            venv.EnvBuilder(with_pip=False).create(directory)
            pip = [sys.executable, "-m", "pip", "--python", str(directory / "bin" / "python")]
            install = subprocess.run(
                [*pip, "install", "--quiet", "--no-compile", *requirements],
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert install.returncode == 0, install.stderr[-3000:]
            built.write_text(json.dumps(requirements))
    assert json.loads(built.read_text()) == requirements
    return InferenceVenv(directory, tuple(requirements))
