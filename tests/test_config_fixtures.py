"""Configs written for earlier releases (tests/configs/<release>/*.yaml) must keep loading.

Add a directory of realistic configs for every release; never edit old ones. A failure here
means a change breaks configs that users already have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mlsmith.config import Config, flatten, load_config

CONFIGS = Path(__file__).parent / "configs"
FIXTURES = sorted(CONFIGS.glob("*/*.yaml"))


def _id(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def test_fixtures_exist() -> None:
    assert len(FIXTURES) >= 2
    assert len(list((CONFIGS / "v0.1").glob("*.yaml"))) >= 2


@pytest.mark.parametrize("path", FIXTURES, ids=_id)
def test_fixture_loads(path: Path) -> None:
    config = load_config(path)

    assert isinstance(config, Config)
    assert config.data.path.startswith("sklearn:")
    # The reloaded resolved config is the same config: nothing was lost on the way.
    assert load_config(yaml.safe_load(config.to_yaml())) == config


@pytest.mark.parametrize("path", FIXTURES, ids=_id)
def test_fixture_values_are_kept(path: Path) -> None:
    """Every value written in the file ends up in the config, not silently replaced."""
    written = flatten(yaml.safe_load(path.read_text()))
    loaded = load_config(path).flat()

    for key, value in written.items():
        assert key in loaded, f"{key} disappeared"
        got = loaded[key]
        if key == "output_dir":
            # Stored absolute, resolved against the working directory.
            value = str(Path(value).resolve())
        if value is not None and got is not None and type(got) is not type(value):
            # YAML 1.1 reads 3e-3 as text and `precision: 32` as a number; both are coerced.
            value = type(got)(value)
        assert got == value, f"{key}: wrote {value!r}, loaded {got!r}"


@pytest.mark.parametrize("path", FIXTURES, ids=_id)
def test_fixture_data_section_prepares(path: Path) -> None:
    """The data section is usable as written: drop/categorical columns exist, splits work."""
    from mlsmith.data.tabular import prepare

    config = load_config(path)
    data = prepare(config)

    assert len(data.train) > len(data.val) > 0
    for column in config.data.drop:
        assert column not in data.preprocessor.features
    if config.data.categorical is not None:
        assert data.preprocessor.categorical == config.data.categorical


def _sections(tree: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        if isinstance(value, dict):
            out.add(prefix + key)
            out |= _sections(value, f"{prefix}{key}.")
    return out


def test_the_fixtures_use_every_section() -> None:
    used: set[str] = set()
    keys: set[str] = set()
    for path in FIXTURES:
        raw = yaml.safe_load(path.read_text())
        used |= _sections(raw)
        if path.parent.name == "v0.1":
            keys |= set(flatten(raw))
    every_section = _sections(load_config(CONFIGS / "v0.1" / "minimal.yaml").to_dict())

    assert every_section <= used, f"not covered: {sorted(every_section - used)}"
    for key in ("data.drop", "data.categorical", "train.precision", "data.split.stratify"):
        assert key in keys
