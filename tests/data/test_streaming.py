"""``data.stream: true``: tables read in chunks, never whole, trained on exactly and resumably.

Real files (CSV and Parquet with several row groups), real DataLoader workers, real runs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from tests.conftest import config_dict, make_table

import mlsmith
from mlsmith.config import load_config
from mlsmith.data.batches import BatchOptions, split_batches
from mlsmith.data.stream_batches import StreamedSplit, StreamTableBatches
from mlsmith.data.streaming import TRAIN, SplitRule
from mlsmith.data.tables import read_table, table_chunks
from mlsmith.data.tabular import TabularPreprocessor, prepare
from mlsmith.errors import ConfigError, DataError
from mlsmith.tasks import fit_task

ROWS = 2400
STREAM = {"stream": True, "chunk_rows": 300, "shuffle_buffer": 500, "num_workers": 2}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same table as CSV and as Parquet in row groups of 300 rows; a few labels missing."""
    directory = tmp_path_factory.mktemp("stream")
    frame = make_table("binary", rows=ROWS)
    frame.loc[[5, 700, 1999], "label"] = None
    paths = {"csv": directory / "table.csv", "parquet": directory / "table.parquet"}
    frame.to_csv(paths["csv"], index=False)
    frame.to_parquet(paths["parquet"], row_group_size=300)
    return paths


def stream_config(path: Path, output: Path, **data: Any) -> dict[str, Any]:
    config = config_dict(
        path,
        output,
        model={"type": "mlp", "hidden": [16], "dropout": 0.2},
        train={"epochs": 2, "batch_size": 64},
        eval={"bootstrap": 0, "report": False, "baseline": False},
    )
    config["data"].update(STREAM, **data)
    return config


# --- the one pass -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_stream_statistics_match_the_in_memory_fit_on_the_same_rows(
    files: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    config = load_config(stream_config(files[kind], tmp_path))
    data = prepare(config)

    # The rows the streamed split put in training, read whole here to fit the usual way.
    whole = read_table(str(files[kind]))
    labelled = whole.loc[whole["label"].notna()]
    rule = SplitRule(config.seed, config.data.split.val, config.data.split.test)
    train = labelled.loc[rule.assign(labelled.index.to_numpy()) == TRAIN]
    task = fit_task("binary", labelled["label"], train["label"])
    expected = TabularPreprocessor.fit(
        train.drop(columns="label"), target="label", task=task, categorical=["color"]
    )

    got = data.preprocessor
    assert isinstance(got, TabularPreprocessor)
    assert got.numeric == expected.numeric and got.categorical == expected.categorical
    assert got.vocabularies == expected.vocabularies
    assert got.task.to_dict() == task.to_dict()
    # The sample holds every training row here, so even the medians are exact.
    np.testing.assert_allclose(got.medians, expected.medians, rtol=1e-12)
    np.testing.assert_allclose(got.means, expected.means, rtol=1e-9)
    np.testing.assert_allclose(got.stds, expected.stds, rtol=1e-9)
    assert isinstance(data.train, StreamedSplit) and data.train.stream is not None
    assert data.train.stream.rows == len(train) == data.summary["rows"]["train"]
    n_val, n_test = data.summary["rows"]["val"], data.summary["rows"]["test"]
    assert len(train) + n_val + n_test == len(labelled)
    assert 0.1 < n_val / len(labelled) < 0.2 and 0.1 < n_test / len(labelled) < 0.2


def test_csv_and_parquet_give_the_same_split_and_statistics(
    files: dict[str, Path], tmp_path: Path
) -> None:
    csv = prepare(load_config(stream_config(files["csv"], tmp_path)))
    parquet = prepare(load_config(stream_config(files["parquet"], tmp_path)))

    assert csv.summary["rows"] == parquet.summary["rows"]
    np.testing.assert_allclose(csv.preprocessor.means, parquet.preprocessor.means, rtol=1e-12)
    np.testing.assert_array_equal(csv.val.target, parquet.val.target)


def test_a_small_sample_and_eval_cap_bound_what_is_held(
    files: dict[str, Path], tmp_path: Path
) -> None:
    config = load_config(
        stream_config(files["csv"], tmp_path, stream_sample_rows=100, stream_eval_rows=50)
    )
    data = prepare(config)

    assert len(data.train) == 100 and len(data.val) == 50 and data.test is not None
    assert len(data.test) == 50
    assert data.summary["rows"]["train"] > 1500  # training still reads every row
    # Medians from 100 rows are close to the full ones, not equal; the means of columns
    # without gaps stay exact (x2's gaps are imputed with its median before the mean).
    full = prepare(load_config(stream_config(files["csv"], tmp_path)))
    sampled, every = data.preprocessor, full.preprocessor
    assert isinstance(sampled, TabularPreprocessor) and isinstance(every, TabularPreprocessor)
    assert sampled.numeric == ["x1", "x2", "size"]
    np.testing.assert_allclose(sampled.means[[0, 2]], every.means[[0, 2]], rtol=1e-12)
    np.testing.assert_allclose(sampled.means[1], every.means[1], atol=0.05)
    assert np.all(np.abs(sampled.medians - every.medians) < 0.5 * every.stds)


def test_the_training_file_is_never_read_whole(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No whole-table read of the data file, and no chunk larger than chunk_rows, in prepare
    or in an epoch of batches."""
    import mlsmith.data.tabular as tabular
    from mlsmith.data.tables import TableChunks

    def whole_read(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"read_table{args} on a streamed file")

    largest = [0]
    read_chunk = TableChunks.read

    def counted(self: TableChunks, chunk: int) -> Any:
        for frame in read_chunk(self, chunk):
            largest[0] = max(largest[0], len(frame))
            yield frame

    monkeypatch.setattr(tabular, "read_table", whole_read)
    monkeypatch.setattr(TableChunks, "read", counted)
    config = load_config(stream_config(files["parquet"], tmp_path, num_workers=0))
    data = prepare(config)
    batches = split_batches(data.preprocessor, data.train, BatchOptions(64, shuffle=True))
    seen = sum(len(target) for step in batches.steps() for _, target in step)

    assert seen == data.summary["rows"]["train"]
    assert 0 < largest[0] <= config.data.chunk_rows < ROWS


# --- batches ----------------------------------------------------------------------------------


def epoch(batches: StreamTableBatches, accumulate: int = 1) -> list[torch.Tensor]:
    return [inputs["numeric"] for step in batches.steps(accumulate) for inputs, _ in step]


def test_an_epoch_holds_every_training_row_once_in_a_seeded_order(
    files: dict[str, Path], tmp_path: Path
) -> None:
    data = prepare(load_config(stream_config(files["csv"], tmp_path)))
    options = BatchOptions(64, shuffle=True, seed=3, train=True)
    first = split_batches(data.preprocessor, data.train, options)
    assert isinstance(first, StreamTableBatches)

    state = first.generator.get_state()
    one = epoch(first)
    first.generator.set_state(state)
    again = epoch(first)
    two = epoch(first)  # the next epoch: the generator moved on

    rows = torch.cat(one)
    assert len(rows) == data.summary["rows"]["train"] == len(first)
    assert [len(b) for b in one] == [hi - lo for s in first.micro_batches() for lo, hi in s]
    assert all(torch.equal(a, b) for a, b in zip(one, again, strict=True))
    assert not torch.equal(rows, torch.cat(two))
    # The same rows, reordered: every row once per epoch.
    key = lambda t: torch.sort(t[:, 0]).values  # noqa: E731
    assert torch.equal(key(rows), key(torch.cat(two)))
    # Worker count changes the interleaving, not the rows.
    zero = StreamTableBatches(dataclasses.replace(data.train.stream, num_workers=0), options)
    assert torch.equal(key(torch.cat(epoch(zero))), key(rows))


def test_processes_take_disjoint_chunks_and_the_same_number_of_steps(
    files: dict[str, Path], tmp_path: Path
) -> None:
    data = prepare(load_config(stream_config(files["parquet"], tmp_path, num_workers=0)))
    assert isinstance(data.train, StreamedSplit) and data.train.stream is not None
    options = BatchOptions(32, shuffle=True, seed=1, train=True)
    ranks = [StreamTableBatches(data.train.stream, options).shard(r, 2) for r in range(2)]

    shares = [torch.cat(epoch(batches, accumulate=2)) for batches in ranks]

    assert ranks[0].n_steps(2) == ranks[1].n_steps(2) > 0
    assert len(shares[0]) == len(shares[1]) == len(ranks[0]) // 2
    together = torch.cat(shares)[:, :2]
    assert len(torch.unique(together, dim=0)) == len(together)  # no row on both ranks


# --- training, resume, the CLI ----------------------------------------------------------------


class StopAfter:
    """Interrupts training once ``global_step`` reaches ``step`` (as a Ctrl-C would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_step_end(self, trainer: Any) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


class StopAfterEpoch:
    """Interrupts training once the first epoch is checkpointed."""

    def on_epoch_end(self, trainer: Any, row: dict[str, float]) -> None:
        raise KeyboardInterrupt


def weights(run: mlsmith.Run, name: str = "last.pt") -> dict[str, torch.Tensor]:
    state = torch.load(run.path / "checkpoints" / name, weights_only=True)["model"]
    return dict(state)


@pytest.mark.parametrize("where", ["mid-epoch", "epoch-end"])
def test_resume_ends_with_the_weights_of_an_uninterrupted_run(
    files: dict[str, Path], tmp_path: Path, where: str
) -> None:
    config = stream_config(files["csv"], tmp_path / "runs")
    config["train"] |= {"epochs": 3, "checkpoint": {"every_n_steps": 10}}
    straight = mlsmith.train(config, epoch_lines=False)

    stop = StopAfter(46) if where == "mid-epoch" else StopAfterEpoch()
    with pytest.raises(KeyboardInterrupt):
        mlsmith.train(config, callbacks=[stop], epoch_lines=False)
    stopped = sorted((tmp_path / "runs" / "t").iterdir())[-1]
    loop = torch.load(stopped / "checkpoints" / "last.pt", weights_only=True)["loop"]
    # ~27 steps an epoch: step 46 is mid-way through epoch 2 (last.pt from step 40).
    assert loop["epoch"] == 1 and (loop["step_in_epoch"] > 0) == (where == "mid-epoch")
    resumed = mlsmith.train(config, resume=stopped, epoch_lines=False)

    for name in ("last.pt", "best.pt"):
        expected, got = weights(straight, name), weights(resumed, name)
        assert all(torch.equal(expected[k], got[k]) for k in expected), name
    assert json.loads((resumed.path / "metrics.json").read_text()) == json.loads(
        (straight.path / "metrics.json").read_text()
    )


def test_a_streamed_run_evaluates_packages_and_predicts(
    files: dict[str, Path], tmp_path: Path, cli: Any
) -> None:
    config = stream_config(files["parquet"], tmp_path / "runs")
    config["export"] = {"package": True}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))

    result = cli("train", path, "--no-progress", "data.num_workers=1")
    assert result.code == 0, result.stderr
    run = mlsmith.Run(result.stdout.strip().splitlines()[-1])
    assert run.config.data.stream and run.config.data.num_workers == 1
    assert run.info["status"] == "finished" and run.info["package"]["status"] == "written"
    assert run.metrics["test"]["accuracy"]["value"] > 0.7
    assert run.info["data"]["rows"]["train"] > 1500

    rows = make_table("binary", rows=20, seed=9).drop(columns="label")
    rows.to_csv(tmp_path / "new.csv", index=False)
    predicted = cli("predict", run.path, "-i", tmp_path / "new.csv", "-o", tmp_path / "out.csv")
    assert predicted.code == 0, predicted.stderr
    assert len(pd.read_csv(tmp_path / "out.csv")) == 20


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "sections", "key"),
    [
        ({"split": {"time": "x1"}}, {}, "split.time"),
        ({"split": {"group": "color"}}, {}, "split.group"),
        ({"split": {"stratify": True}}, {}, "split.stratify"),
        ({"group_column": "color"}, {"model": {"type": "mlp"}}, "group_column"),
        ({}, {"model": {"type": "lightgbm"}}, "model.type"),
        ({}, {"train": {"sampler": "balanced"}}, "train.sampler"),
        ({}, {"eval": {"cv": {"folds": 3}}}, "eval.cv"),
        ({"chunk_rows": 0}, {}, "chunk_rows"),
    ],
)
def test_combinations_streaming_cannot_honour_are_refused(
    files: dict[str, Path], tmp_path: Path, data: dict[str, Any], sections: Any, key: str
) -> None:
    config = stream_config(files["csv"], tmp_path, **data)
    for name, section in sections.items():
        # A model section is replaced whole: another family has other keys.
        config[name] = section if name == "model" else {**config[name], **section}

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(config)


def test_a_builtin_dataset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="stream: reads CSV or Parquet"):
        load_config(stream_config(Path("sklearn:iris"), tmp_path))


def test_a_refused_key_on_the_command_line_exits_2(
    files: dict[str, Path], tmp_path: Path, cli: Any
) -> None:
    path = tmp_path / "config.yaml"
    config = stream_config(files["csv"], tmp_path / "runs")
    config["data"]["stream"] = False
    config["model"] = {"type": "mlp"}
    path.write_text(yaml.safe_dump(config))

    result = cli("train", path, "data.stream=true", "model.type=xgboost")

    assert result.code == 2
    assert "model.type 'xgboost'" in result.stderr and "data.stream" in result.stderr


def test_a_missing_file_is_a_data_error(tmp_path: Path) -> None:
    config = load_config(stream_config(tmp_path / "absent.csv", tmp_path))
    with pytest.raises(DataError, match="data file not found"):
        prepare(config)


def test_a_later_chunk_with_text_in_a_numeric_column_names_its_rows(tmp_path: Path) -> None:
    frame = make_table("binary", rows=900)
    frame["x1"] = frame["x1"].astype(object)
    frame.loc[750, "x1"] = "oops"
    frame.to_csv(tmp_path / "bad.csv", index=False)
    config = load_config(
        stream_config(tmp_path / "bad.csv", tmp_path, split={"val": 0.01, "test": 0.0})
    )

    with pytest.raises(DataError, match=r"rows 600-899\).*'x1'.*'oops'"):
        prepare(config)


def test_a_bad_value_met_by_a_worker_is_a_data_error_naming_its_rows(tmp_path: Path) -> None:
    """The file changed after the pass: a worker's chunk fails, the main process says where."""
    frame = make_table("binary", rows=900)
    path = tmp_path / "table.parquet"
    frame.to_parquet(path, row_group_size=300)
    data = prepare(load_config(stream_config(path, tmp_path)))
    frame["x1"] = frame["x1"].astype(str)
    frame.loc[frame.index[frame.index >= 300], "x1"] = "oops"
    frame.to_parquet(path, row_group_size=300)
    batches = split_batches(data.preprocessor, data.train, BatchOptions(64, shuffle=True))

    with pytest.raises(DataError, match=r"table\.parquet \(rows \d+-\d+\).*'x1'.*'oops'"):
        list(batches.steps())


def test_a_regression_target_is_scaled_from_every_training_row(tmp_path: Path) -> None:
    frame = make_table("regression", rows=1500)
    frame.to_csv(tmp_path / "reg.csv", index=False)
    config = load_config(stream_config(tmp_path / "reg.csv", tmp_path, stream_sample_rows=50))
    data = prepare(config)

    rule = SplitRule(config.seed, config.data.split.val, config.data.split.test)
    train = frame.loc[rule.assign(frame.index.to_numpy()) == TRAIN, "label"]
    task = data.preprocessor.task.to_dict()
    assert task["kind"] == "regression"
    np.testing.assert_allclose([task["mean"], task["std"]], [train.mean(), train.std(ddof=0)])


def test_a_quoted_line_break_stays_in_one_chunk(tmp_path: Path) -> None:
    path = tmp_path / "quoted.csv"
    path.write_text('a,note\n1,"two\nlines"\n2,plain\n3,"x"\n4,y\n')

    chunks = table_chunks(str(path), 2)
    frames = [frame for i in range(len(chunks)) for frame in chunks.read(i)]

    assert [len(f) for f in frames] == [2, 2]
    assert frames[0]["note"].tolist() == ["two\nlines", "plain"]


def test_fewer_chunks_than_processes_is_a_clear_error(
    files: dict[str, Path], tmp_path: Path
) -> None:
    data = prepare(load_config(stream_config(files["csv"], tmp_path, chunk_rows=5000)))
    assert isinstance(data.train, StreamedSplit) and data.train.stream is not None
    batches = StreamTableBatches(data.train.stream, BatchOptions(32)).shard(0, 2)

    with pytest.raises(DataError, match=r"lower data\.chunk_rows"):
        batches.n_steps()


def test_the_stream_keys_are_inert_without_data_stream(
    files: dict[str, Path], tmp_path: Path
) -> None:
    data = prepare(load_config(stream_config(files["csv"], tmp_path, stream=False)))

    assert not isinstance(data.train, StreamedSplit)
    assert data.train.streamed(BatchOptions(32)) is None
