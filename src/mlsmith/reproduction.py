"""``mlsmith reproduce RUN``: run a run again from its directory alone, and compare.

Every run writes ``requirements.lock`` beside ``config.yaml`` (:func:`mlsmith.run.write_lock`):
every installed distribution at its exact version (``pip install -r`` reads it), headed by the
Python, platform and CUDA it ran on. :func:`reproduce` reads the run's config, checks that the
data found at its paths is the data the run fingerprinted (a different fingerprint:
:class:`DataChangedError`, exit 1, before any training), warns about every version that
differs from the lock, trains the config again into a new run directory, and compares the new
test metrics with the old: on the same machine and versions they are identical (a seeded run is
deterministic on the CPU); elsewhere the table gives each difference beside both runs'
confidence intervals.
"""

from __future__ import annotations

import logging
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlsmith.config import load_config
from mlsmith.errors import MlsmithError
from mlsmith.run import CONFIG_FILE, LOCK_FILE, Run, installed, load_run, read_lock

log = logging.getLogger(__name__)


class DataChangedError(MlsmithError):
    """The data at the run's paths is not the data the run trained on."""

    exit_code = 1


@dataclass(frozen=True)
class MetricComparison:
    """One test metric of the original run and of the reproduction."""

    name: str
    original: float | None
    new: float | None
    original_ci: list[float] | None = None
    new_ci: list[float] | None = None

    @property
    def difference(self) -> float | None:
        if self.original is None or self.new is None:
            return None
        return self.new - self.original

    @property
    def identical(self) -> bool:
        if self.original is None or self.new is None:
            return self.original is None and self.new is None
        both_nan = math.isnan(self.original) and math.isnan(self.new)
        return both_nan or self.original == self.new


@dataclass
class Reproduction:
    """What :func:`reproduce` found: the two runs, the environment's differences from the lock,
    and every test metric side by side."""

    original: Run
    new: Run
    environment: list[str] = field(default_factory=list)
    metrics: list[MetricComparison] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return bool(self.metrics) and all(m.identical for m in self.metrics)


def environment_differences(run_dir: Path) -> list[str]:
    """Every way this environment differs from the run's lock, one line each."""
    header, locked = read_lock(run_dir)
    if not locked:
        return [f"{run_dir}: no {LOCK_FILE} (a run from an older mlsmith): versions not compared"]
    differences = []
    if header.get("python") and header["python"] != platform.python_version():
        differences.append(f"python {platform.python_version()}, the run had {header['python']}")
    current = installed()
    for name, version in sorted(locked.items()):
        now = current.get(name)
        if now is None:
            differences.append(f"{name} is not installed, the run had {version}")
        elif now != version:
            differences.append(f"{name} {now}, the run had {version}")
    for name in sorted(set(current) - set(locked)):
        differences.append(f"{name} {current[name]} is installed, the run did not have it")
    return differences


def reproduce(run: str | Path | Run, output: str | Path | None = None) -> Reproduction:
    """Train ``run``'s config again (into ``output``, default the run's own output folder) and
    compare; see the module. DataChangedError (exit 1) when the data differs."""
    from mlsmith.pipeline import run_training

    original = run if isinstance(run, Run) else load_run(run)
    config_file = original.path / CONFIG_FILE
    if not config_file.is_file():
        raise MlsmithError(f"{original.path}: not a run directory (no {CONFIG_FILE})")
    overrides = [f"output_dir={Path(output).resolve()}"] if output is not None else []
    cfg = load_config(config_file, overrides)
    recorded = original.info.get("data_fingerprint")
    found = data_fingerprint(cfg)
    if recorded and found != recorded:
        raise DataChangedError(
            f"{original.path}: the data at {cfg.data.path} is not the data the run trained on "
            f"(fingerprint {found}, the run recorded {recorded}); restore it, or train the "
            "config as a new run"
        )
    differences = environment_differences(original.path)
    for line in differences:
        log.warning("reproduce: %s", line)
    new = run_training(cfg, progress=False)
    return Reproduction(original, new, differences, compare_metrics(original, new))


def data_fingerprint(cfg: Any) -> str:
    """The fingerprint a run of ``cfg`` records for its data (read, not trained on)."""
    if cfg.data.type == "timeseries":
        from mlsmith.data.timeseries import load_series

        return load_series(cfg)[1]
    from mlsmith import families

    fingerprint: str = families.data_kind(cfg.data.type).prepare(cfg).fingerprint
    return fingerprint


def compare_metrics(original: Run, new: Run) -> list[MetricComparison]:
    """Every test metric of either run (the headline ones first), side by side."""
    old_test = (original.metrics or {}).get("test") or {}
    new_test = (new.metrics or {}).get("test") or {}
    rows = []
    for name in dict.fromkeys([*old_test, *new_test]):
        before, after = old_test.get(name), new_test.get(name)
        if not isinstance(before, dict | type(None)) or not isinstance(after, dict | type(None)):
            continue
        rows.append(
            MetricComparison(
                name,
                _value(before),
                _value(after),
                (before or {}).get("ci95"),
                (after or {}).get("ci95"),
            )
        )
    return rows


def _value(entry: dict[str, Any] | None) -> float | None:
    if not entry or not isinstance(entry.get("value"), int | float):
        return None
    return float(entry["value"])
