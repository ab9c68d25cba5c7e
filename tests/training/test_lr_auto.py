"""``train.optimizer.lr: auto``: a range test picks the rate before training, without changing
anything else about the run (same initial weights, same batches), and the run records it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from tests.conftest import config_dict, make_table

from mlsmith import train
from mlsmith.reports.facts import hyperparameter_rows
from mlsmith.reports.runinfo import load_record


def _config(tmp_path: Path, **train_section: object) -> Path:
    path = tmp_path / "t.csv"
    if not path.exists():
        make_table("binary", rows=300).to_csv(path, index=False)
    config = config_dict(path, tmp_path / "runs", train={"epochs": 2, **train_section})
    file = tmp_path / f"c{len(list(tmp_path.glob('c*.yaml')))}.yaml"
    file.write_text(yaml.safe_dump(config))
    return file


def test_auto_picks_a_rate_and_changes_nothing_else(tmp_path: Path) -> None:
    run = train(_config(tmp_path, optimizer={"lr": "auto"}))
    info = json.loads((run.path / "run.json").read_text())
    chosen = info["lr_auto"]["lr"]
    assert 1e-6 < chosen < 10 and info["lr_auto"]["steps"] >= 10
    assert (run.path / "lr_find" / "lr_find.png").stat().st_size > 0
    assert "lr_find.csv" in {f.name for f in (run.path / "lr_find").iterdir()}
    assert yaml.safe_load((run.path / "config.yaml").read_text())["train"]["optimizer"]["lr"] == (
        "auto"
    )
    assert run.history["lr"].iloc[0] == pytest.approx(chosen)

    # The same run with that rate written down: bit-identical weights, so the range test
    # consumed no randomness and touched no weight of the network that trained.
    fixed = train(_config(tmp_path, optimizer={"lr": chosen}))
    auto_weights = torch.load(run.path / "checkpoints" / "best.pt", weights_only=True)["model"]
    fixed_weights = torch.load(fixed.path / "checkpoints" / "best.pt", weights_only=True)["model"]
    for name, value in fixed_weights.items():
        assert torch.equal(auto_weights[name], value), name
    rows = dict(hyperparameter_rows(load_record(run.path)))
    assert rows["train.optimizer.lr"].startswith(f"auto: {chosen:.3g}")


def test_auto_is_refused_where_nothing_descends_a_gradient(tmp_path: Path, cli: object) -> None:
    config = _config(tmp_path)
    trees = yaml.safe_load(config.read_text()) | {"model": {"type": "lightgbm"}}
    (tmp_path / "trees.yaml").write_text(yaml.safe_dump(trees))
    result = cli("train", tmp_path / "trees.yaml", "train.optimizer.lr=auto")  # type: ignore[operator]
    assert result.code == 2
    assert "train.optimizer.lr" in result.stderr and "lightgbm" in result.stderr
    for bad in ("0", "-1e-3", "fast"):
        result = cli("train", config, f"train.optimizer.lr={bad}")  # type: ignore[operator]
        assert result.code == 2 and "train.optimizer.lr" in result.stderr, result.stderr
