"""Text classification end to end through the CLI: train, evaluate, predict; bf16; exact resume.

The resume test kills `mlsmith train` with SIGKILL mid-epoch and resumes it: the final weights
must be bit-identical to a run never interrupted, which needs the length-bucketed batch order,
dropout and the schedule all restored exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from tests.conftest import CliResult, config_dict
from tests.test_resume import assert_same_weights, history, info, train, train_and_kill
from tests.text_data import make_texts

import mlsmith

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One torch thread here and in the `mlsmith train` subprocesses.

    These models are tiny: a second thread gains nothing, and on a busy 2-core machine every op
    can wait for it to be scheduled (steps 100x slower were seen).
    """
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_config(directory: Path, data: Path, name: str = "text", **sections: Any) -> Path:
    raw = config_dict(data, directory / f"runs-{name}", eval={"bootstrap": 100})
    raw["data"] = {
        "type": "text",
        "path": str(data),
        "target": "label",
        "tokenizer": {"vocab_size": 300},
        **sections.pop("data", {}),
    }
    raw["model"] = sections.pop("model", {"type": "bag", "dim": 8, "buckets": 4096})
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "reviews.csv"
    make_texts("binary", rows=400, seed=0).to_csv(path, index=False)
    return path


def _run_dir(result: CliResult) -> Path:
    assert result.code == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


def test_train_evaluate_and_predict_raw_text(
    texts: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    config = write_config(
        tmp_path, texts, train={"epochs": 8, "optimizer": {"lr": 0.02}, "batch_size": 16}
    )
    run_dir = _run_dir(cli("train", config, "--no-progress"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["accuracy"]["value"] > 0.8  # the signal words are learnable
    state = json.loads((run_dir / "preprocessing.json").read_text())
    assert state["kind"] == "text" and "WordPiece" in state["tokenizer"]
    assert not list(run_dir.rglob("*.pkl"))

    # The run's own test split, rebuilt from the seed: the same numbers as training reported.
    evaluated = cli("evaluate", run_dir, "--json")
    assert evaluated.code == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test"]["accuracy"] == metrics["test"]["accuracy"]

    # Other labelled rows, with a missing text and a missing label.
    other = make_texts("binary", rows=60, seed=5)
    other.loc[0, "text"] = None
    other.loc[1, "label"] = None
    other.to_csv(tmp_path / "other.csv", index=False)
    scored = cli("evaluate", run_dir, "--data", tmp_path / "other.csv", "--json")
    assert scored.code == 0, scored.stderr
    assert json.loads(scored.stdout)["data:other.csv"]["accuracy"]["value"] > 0.7
    assert "dropped 1 of 60 rows" in scored.stderr

    # Raw text in (no label column), predictions out, read and written in chunks.
    raw = make_texts("binary", rows=45, seed=6)
    raw.insert(0, "id", range(45))
    raw.drop(columns="label").to_csv(tmp_path / "raw.csv", index=False)
    out = tmp_path / "predictions.csv"
    result = cli(
        "predict", run_dir, "-i", tmp_path / "raw.csv", "-o", out, "--chunk-rows", "10",
        "--keep", "id",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    predictions = pd.read_csv(out)
    assert list(predictions.columns) == ["id", "prediction", "proba_negative", "proba_positive"]
    assert predictions["id"].tolist() == list(range(45))
    np.testing.assert_allclose(predictions[["proba_negative", "proba_positive"]].sum(axis=1), 1)
    assert (predictions["prediction"] == raw["label"]).mean() > 0.7

    # The same through the API, from a DataFrame and to Parquet.
    run = mlsmith.load_run(run_dir)
    in_memory = run.predict(raw[["text"]])
    np.testing.assert_allclose(in_memory["proba_positive"], predictions["proba_positive"], 1e-6)
    run.predict_file(tmp_path / "raw.csv", tmp_path / "p.parquet", chunk_rows=7)
    assert pd.read_parquet(tmp_path / "p.parquet")["prediction"].tolist() == (
        predictions["prediction"].tolist()
    )


def test_predict_without_the_text_column_is_a_clear_error(
    texts: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    config = write_config(tmp_path, texts, train={"epochs": 1})
    run_dir = _run_dir(cli("train", config, "--no-progress"))
    make_texts(rows=5).rename(columns={"text": "body"}).to_csv(tmp_path / "raw.csv", index=False)
    result = cli("predict", run_dir, "-i", tmp_path / "raw.csv", "-o", tmp_path / "out.csv")
    assert result.code == 2
    assert "raw.csv: text column 'text' not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.csv").exists()


def test_transformer_trains_in_bf16_mixed_precision(
    texts: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    config = write_config(
        tmp_path,
        texts,
        model={"type": "transformer", "dim": 16, "depth": 1, "heads": 2, "pooling": "cls"},
        train={"epochs": 2, "precision": "bf16-mixed"},
    )
    run_dir = _run_dir(cli("train", config, "--no-progress"))
    rows = pd.read_csv(run_dir / "history.csv")
    assert len(rows) == 2 and np.isfinite(rows["train/loss"]).all()
    assert rows["train/loss"].iloc[1] < rows["train/loss"].iloc[0]
    assert info(run_dir)["status"] == "finished"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["precision"] == (
        "bf16-mixed"
    )


def test_kill_mid_epoch_then_resume_is_bit_identical(texts: Path, tmp_path: Path) -> None:
    """A transformer with dropout on length-bucketed batches, killed inside epoch 2 or later."""
    data = tmp_path / "more.csv"
    make_texts("binary", rows=900, seed=1).to_csv(data, index=False)
    sections: dict[str, Any] = {
        "model": {"type": "transformer", "dim": 16, "depth": 1, "heads": 2, "dropout": 0.2},
        "train": {
            "epochs": 4,
            "batch_size": 8,
            "scheduler": {"name": "cosine", "warmup_epochs": 1},
            "checkpoint": {"every_n_steps": 10},
        },
        "eval": {"bootstrap": 0},
    }
    reference = train(write_config(tmp_path, data, "reference", **sections))
    config = write_config(tmp_path, data, "killed", **sections)
    run_dir = train_and_kill(
        config,
        lambda loop: loop["epoch"] >= 1 and loop["step_in_epoch"] > 0,
        tmp_path / "killed.log",
    )
    killed = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["loop"]
    assert 1 <= killed["epoch"] < 4 and killed["step_in_epoch"] > 0

    assert train(config, "--resume", run_dir) == run_dir
    assert_same_weights(run_dir, reference)
    pd.testing.assert_frame_equal(history(run_dir), history(reference), check_exact=True)
    assert len(history(run_dir)) == 4
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(
        (reference / "metrics.json").read_text()
    )
    assert (run_dir / "preprocessing.json").read_text() == (
        reference / "preprocessing.json"
    ).read_text()
    assert info(run_dir)["status"] == "finished"
