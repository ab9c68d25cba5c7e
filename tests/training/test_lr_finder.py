"""The LR range test: suggestion maths, the API and ``mlsmith lr-find``."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import CliResult, config_dict

import mlsmith
from mlsmith.training.lr_finder import centred_average, suggest


def test_suggestion_is_the_steepest_fall_before_the_minimum() -> None:
    lrs = list(np.logspace(-6, 1, 71))
    logs = np.log10(lrs)
    # Flat at 2.0, falls fastest around 1e-3, lowest near 1e-1, then explodes.
    losses = list(
        2.0 - 1.5 / (1 + np.exp(-(logs + 3) * 3)) + np.where(logs > -1, (logs + 1) ** 2 * 5, 0)
    )
    steep, lowest = suggest(lrs, losses)
    assert steep is not None and lowest is not None
    assert 3e-4 < steep < 3e-3
    assert 3e-2 < lowest < 3e-1
    assert suggest(lrs[:3], losses[:3]) == (None, None)


def test_centred_average_does_not_lag() -> None:
    step = [1.0] * 10 + [0.0] * 10
    smooth = centred_average(step, window=5)
    assert smooth[0] == 1.0 and smooth[-1] == 0.0
    assert smooth[9] == pytest.approx(0.6) and smooth[10] == pytest.approx(0.4)  # symmetric


def test_lr_find_api_writes_plot_and_table(table_csv: Callable[..., Path], tmp_path: Path) -> None:
    config = config_dict(table_csv("binary"), tmp_path / "runs")
    result = mlsmith.lr_find(config, steps=60, min_lr=1e-6, max_lr=100.0, output=tmp_path / "lr")
    assert result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = result.table.read_text().splitlines()
    assert lines[0] == "lr,loss,smoothed_loss" and len(lines) == len(result.lrs) + 1
    # Exponential spacing from min_lr, and an LR of 100 with SGD-free AdamW still diverges.
    ratios = np.diff(np.log(result.lrs))
    assert result.lrs[0] == pytest.approx(1e-6) and np.allclose(ratios, ratios[0])
    assert result.diverged and len(result.lrs) < 60
    assert result.suggested_lr is not None and 1e-5 < result.suggested_lr < 1.0
    assert result.min_loss_lr is not None and result.suggested_lr <= result.min_loss_lr
    assert all(math.isfinite(v) for v in result.smoothed)


def test_lr_find_cli(
    cli: Callable[..., CliResult],
    write_config: Callable[..., Path],
    table_csv: Callable[..., Path],
    tmp_path: Path,
) -> None:
    config = write_config(table_csv("multiclass"))
    result = cli(
        "lr-find", config, "train.batch_size=16", "--steps", "40", "--output", tmp_path / "o"
    )
    assert result.code == 0, result.stderr
    assert "suggested lr:" in result.stdout
    assert "train.optimizer.lr=" in result.stdout
    assert (tmp_path / "o" / "lr_find.png").is_file()
    assert (tmp_path / "o" / "lr_find.csv").is_file()


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--min-lr", "1", "--max-lr", "0.1"], "0 < min_lr < max_lr"),
        (["--steps", "3"], "--steps must be at least 10"),
    ],
)
def test_lr_find_rejects_bad_ranges(
    cli: Callable[..., CliResult],
    write_config: Callable[..., Path],
    table_csv: Callable[..., Path],
    options: list[str],
    fragment: str,
) -> None:
    config = write_config(table_csv("binary"))
    result = cli("lr-find", config, *options)
    assert result.code == 2 and fragment in result.stderr
    assert "Traceback" not in result.stderr
