"""Tests for mlsmith.data.base and what every data kind shares through it: preprocessing.json
(kind checked on load), to_split (target required, rows without one dropped with a warning),
batch options, and one split function for every kind."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tests.conftest import config_dict, make_table
from tests.image_data import image_config, make_images, write_npz
from tests.text_data import make_texts

from mlsmith.config import Config, TrainConfig, load_config
from mlsmith.data import images as image_kind
from mlsmith.data import tabular, text
from mlsmith.data.base import PREPROCESSING_FILE, PreparedData, Preprocessor
from mlsmith.data.batches import BatchOptions
from mlsmith.data.splits import split_frames, split_rows
from mlsmith.errors import DataError, RunError

KINDS: dict[str, ModuleType] = {"tabular": tabular, "image": image_kind, "text": text}


@pytest.fixture
def mlsmith_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Any:
    """caplog for the 'mlsmith' logger, which the CLI detaches from the root logger."""
    monkeypatch.setattr(logging.getLogger("mlsmith"), "propagate", True)
    caplog.set_level(logging.INFO, logger="mlsmith")
    return caplog


def _config(kind: str, tmp_path: Path) -> Config:
    """A small labelled dataset of ``kind`` (target column "label") and its config."""
    if kind == "image":
        images, labels = make_images(6, classes=2)
        path = write_npz(tmp_path / "images.npz", images, np.array(["a", "b"])[labels])
        return load_config(image_config(path, tmp_path / "runs"))
    path = tmp_path / f"{kind}.csv"
    raw = config_dict(path, tmp_path / "runs")
    if kind == "text":
        make_texts(rows=80).to_csv(path, index=False)
        raw["data"] = {"type": "text", "path": str(path), "target": "label"}
        raw["model"] = {"type": "bag"}
    else:
        make_table("binary", rows=80).to_csv(path, index=False)
    return load_config(raw)


def _prepared(kind: str, tmp_path: Path) -> PreparedData:
    data: PreparedData = KINDS[kind].prepare(_config(kind, tmp_path))
    return data


# --- preprocessing.json -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_round_trips_and_refuses_another_kinds_file(kind: str, tmp_path: Path) -> None:
    data = _prepared(kind, tmp_path)
    pre = data.preprocessor
    assert isinstance(pre, Preprocessor) and pre.kind == kind
    run_dir = tmp_path / "run"
    pre.save(run_dir)
    assert json.loads((run_dir / PREPROCESSING_FILE).read_text())["kind"] == kind
    assert [p.name for p in run_dir.iterdir()] == [PREPROCESSING_FILE]  # no temporaries left
    assert KINDS[kind].load_preprocessor(run_dir).to_dict() == pre.to_dict()
    for other in sorted(set(KINDS) - {kind}):
        with pytest.raises(RunError) as caught:
            KINDS[other].load_preprocessor(run_dir)
        message = str(caught.value)
        assert str(run_dir / PREPROCESSING_FILE) in message
        assert f"kind '{kind}'" in message and f"expected '{other}'" in message


def test_a_file_without_kind_is_refused(tmp_path: Path) -> None:
    (tmp_path / PREPROCESSING_FILE).write_text(json.dumps({"target": "label"}))
    with pytest.raises(RunError, match=r"preprocessing of no kind, expected 'tabular'"):
        tabular.load_preprocessor(tmp_path)


def test_a_missing_file_stays_a_file_not_found_error(tmp_path: Path) -> None:
    # The run directory turns it into "the fitted preprocessing is missing".
    with pytest.raises(FileNotFoundError):
        tabular.load_preprocessor(tmp_path)


# --- to_split ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_to_split_drops_rows_without_target_and_requires_the_column(
    kind: str, tmp_path: Path, mlsmith_log: pytest.LogCaptureFixture
) -> None:
    data = _prepared(kind, tmp_path)
    pre = data.preprocessor
    frame = pre.read(str(_config(kind, tmp_path).data.path))
    frame = frame.astype({"label": object})
    frame.loc[frame.index[[0, 2]], "label"] = None
    split = pre.to_split(frame, "new rows")
    assert len(split) == len(frame) - 2
    assert "new rows: dropped 2 of" in mlsmith_log.text
    with pytest.raises(DataError, match=r"new rows.*'label'"):
        pre.to_split(frame.drop(columns="label"), "new rows")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_an_unseen_label_names_the_source(kind: str, tmp_path: Path) -> None:
    pre = _prepared(kind, tmp_path).preprocessor
    frame = pre.read(str(_config(kind, tmp_path).data.path)).astype({"label": object})
    frame.loc[frame.index[0], "label"] = "never seen"
    with pytest.raises(DataError, match=r"^new rows: .*labels not seen.*never seen"):
        pre.to_split(frame, "new rows")


# --- batch options ----------------------------------------------------------------------------


def test_batch_options_for_training_and_evaluation() -> None:
    cfg = TrainConfig.model_validate({"batch_size": 16, "eval_batch_size": 256, "drop_last": True})
    assert BatchOptions.training(cfg, seed=7) == BatchOptions(
        16, shuffle=True, seed=7, drop_last=True, train=True
    )
    assert BatchOptions.evaluation(cfg) == BatchOptions(256)
    assert BatchOptions(4) == BatchOptions(4, shuffle=False, seed=0, drop_last=False, train=False)
    with pytest.raises(AttributeError):
        BatchOptions(4).batch_size = 8  # type: ignore[misc]


# --- one split for every kind -----------------------------------------------------------------


def test_split_frames_gives_the_positions_of_the_rows_it_took(tmp_path: Path) -> None:
    config = _config("tabular", tmp_path)
    main = pd.read_csv(config.data.path)
    parts = split_frames(main, None, None, config.data, classification=True, seed=3)
    for name in ("train", "val", "test"):
        positions = getattr(parts.indices, name)
        pd.testing.assert_frame_equal(getattr(parts, name), main.iloc[positions])
    fixed = main.iloc[:5]
    parts = split_frames(main, fixed, None, config.data, classification=True, seed=3)
    assert parts.val is fixed and len(parts.indices.val) == 0
    assert len(parts.train) + len(parts.test) == len(main)


def test_an_empty_split_counts_images(tmp_path: Path) -> None:
    images, labels = make_images(2, classes=2)
    path = write_npz(tmp_path / "a.npz", images, np.array(["a", "b"])[labels])
    config = load_config(image_config(path, tmp_path / "runs", split={"val": 0.0, "test": 0.0}))
    with pytest.raises(DataError, match=r"4 images leave 4 for training and 0 for validation"):
        image_kind.prepare(config)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_splits_the_rows_split_rows_picks(kind: str, tmp_path: Path) -> None:
    config = _config(kind, tmp_path)
    data = KINDS[kind].prepare(config)
    labelled = data.preprocessor.read(str(config.data.path))
    indices = split_rows(
        labelled,
        config.data.split,
        val=config.data.split.val,
        test=config.data.split.test,
        classification=True,
        target="label",
        seed=config.seed,
        source=config.data.path,
    )
    for name in ("train", "val", "test"):
        assert data.frames[name].index.tolist() == getattr(indices, name).tolist()
