"""Fixtures for the pre-flight checks: tables prepared as ``train`` prepares them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from tests.conftest import config_dict

from mlsmith import families
from mlsmith.config import Config, load_config
from mlsmith.data.base import PreparedData

Prepare = Callable[..., tuple[Config, PreparedData]]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: these networks are tiny, and on a busy 2-core machine a second thread
    only makes every op wait for it to be scheduled."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def table_config(tmp_path: Path) -> Callable[..., Config]:
    """Write ``frame`` (and optional fixed val/test frames) as CSVs; return the fast config."""

    def build(
        frame: pd.DataFrame,
        val: pd.DataFrame | None = None,
        test: pd.DataFrame | None = None,
        overrides: list[str] | None = None,
        parquet: bool = False,
        **sections: Any,
    ) -> Config:
        path = tmp_path / ("data.parquet" if parquet else "data.csv")
        if parquet:  # large tables: CSV writing would dominate the test
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
        raw = config_dict(path, tmp_path / "runs", **sections)
        for name, extra in (("val_path", val), ("test_path", test)):
            if extra is not None:
                extra_path = tmp_path / f"{name}.csv"
                extra.to_csv(extra_path, index=False)
                raw["data"] = {**raw["data"], name: str(extra_path)}
        return load_config(raw, overrides)

    return build


@pytest.fixture
def prepare_table(table_config: Callable[..., Config]) -> Prepare:
    """``table_config`` and the data prepared from it."""

    def prepare(frame: pd.DataFrame, **options: Any) -> tuple[Config, PreparedData]:
        config = table_config(frame, **options)
        return config, families.data_kind("tabular").prepare(config)

    return prepare
