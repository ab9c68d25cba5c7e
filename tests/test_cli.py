"""The ``mlsmith`` verbs end to end, in process: train, evaluate, predict, and their user errors."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import CliResult, config_dict, make_table

import mlsmith
from mlsmith.evaluation import CLASSIFICATION_METRICS

Cli = Callable[..., CliResult]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> mlsmith.Run:
    """One tiny binary run that evaluate and predict read (and never change)."""
    root = tmp_path_factory.mktemp("cli")
    data = root / "train.csv"
    make_table("binary").to_csv(data, index=False)
    return mlsmith.train(config_dict(data, root / "runs"), progress=False)


def _new_rows(rows: int = 45, seed: int = 11) -> pd.DataFrame:
    """Raw rows to predict: an id column first, the label still present."""
    frame = make_table("binary", rows=rows, seed=seed)
    frame.insert(0, "id", np.arange(1000, 1000 + rows))
    return frame


def _assert_user_error(result: CliResult, *fragments: str) -> None:
    assert result.code == 2, (result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert "\nerror: " in "\n" + result.stderr, result.stderr  # one line, not a traceback
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# --- train --------------------------------------------------------------------------------------


def test_train_prints_metrics_and_the_run_directory_last(
    cli: Cli, table_csv: Callable[..., Path], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config(table_csv("binary"))
    result = cli("train", config, "--no-progress")
    assert result.code == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    run_dir = Path(last)
    assert run_dir.is_dir()
    assert run_dir.parent == (tmp_path / "runs" / "t").resolve()
    assert (run_dir / "metrics.json").is_file()
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    # The metrics table goes to stdout before the path.
    for name in ("accuracy", "roc_auc", "log_loss"):
        assert name in result.stdout
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


def test_train_with_overrides(
    cli: Cli, table_csv: Callable[..., Path], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config(table_csv("regression"))
    result = cli("train", config, "train.epochs=2", "experiment=cli-over", "--no-progress")
    assert result.code == 0, result.stderr
    run = mlsmith.load_run(result.stdout.strip().splitlines()[-1])
    assert run.path.parent == (tmp_path / "runs" / "cli-over").resolve()
    assert run.config.train.epochs == 2
    assert len(run.history) == 2
    assert "rmse" in result.stdout


def test_train_bad_override_is_a_user_error(
    cli: Cli, table_csv: Callable[..., Path], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config(table_csv("binary"))
    result = cli("train", config, "train.epochs=zero")
    _assert_user_error(result, "train.epochs", "command line")
    assert not (tmp_path / "runs").exists()


def test_train_missing_config_file_is_a_user_error(cli: Cli, tmp_path: Path) -> None:
    _assert_user_error(cli("train", tmp_path / "nope.yaml"), "config file not found")


# --- evaluate -----------------------------------------------------------------------------------


def test_evaluate_prints_a_table(cli: Cli, run: mlsmith.Run) -> None:
    result = cli("evaluate", run.path)
    assert result.code == 0, result.stderr
    assert "test" in result.stdout
    for name in CLASSIFICATION_METRICS:
        assert name in result.stdout
    accuracy = run.metrics["test"]["accuracy"]
    assert f"{accuracy['value']:.4f}" in result.stdout
    low, high = accuracy["ci95"]
    assert f"[{low:.4f}, {high:.4f}]" in result.stdout


def test_evaluate_json_matches_the_recorded_test_metrics(cli: Cli, run: mlsmith.Run) -> None:
    result = cli("evaluate", run.path, "--json")
    assert result.code == 0, result.stderr
    printed = json.loads(result.stdout)
    assert set(printed) == {"test"}
    recorded = run.metrics["test"]
    assert set(printed["test"]) == set(CLASSIFICATION_METRICS)
    for name, entry in printed["test"].items():
        assert entry["value"] == pytest.approx(recorded[name]["value"], rel=1e-9)
        assert entry["ci95"] == pytest.approx(recorded[name]["ci95"], rel=1e-9)


def test_evaluate_other_data(cli: Cli, run: mlsmith.Run, tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    frame = make_table("binary", rows=60, seed=21)
    frame.to_csv(other, index=False)
    result = cli("evaluate", run.path, "--data", other, "--json")
    assert result.code == 0, result.stderr
    printed = json.loads(result.stdout)
    assert set(printed) == {"data:other.csv"}
    predicted = run.predict(frame)["prediction"]
    accuracy = float((predicted == frame["label"]).mean())
    assert printed["data:other.csv"]["accuracy"]["value"] == pytest.approx(accuracy)
    table = cli("evaluate", run.path, "--data", other)
    assert table.code == 0 and "data:other.csv" in table.stdout


def test_warnings_reach_the_current_stderr(cli: Cli, run: mlsmith.Run, tmp_path: Path) -> None:
    # An earlier invocation ran with a stderr that is closed by now (as between two tests).
    earlier = io.StringIO()
    with contextlib.redirect_stderr(earlier):
        cli("--version")
    earlier.close()
    other = tmp_path / "other.csv"
    frame = make_table("binary", rows=60, seed=21)
    frame.loc[[4, 9], "label"] = None
    frame.to_csv(other, index=False)
    result = cli("evaluate", run.path, "--data", other, "--json")
    assert result.code == 0, result.stderr
    assert "warning: " in result.stderr
    assert "dropped 2 of 60 rows whose target 'label' is missing" in result.stderr
    assert "Logging error" not in result.stderr
    assert json.loads(result.stdout)["data:other.csv"]["accuracy"]["value"] is not None


def test_evaluate_data_with_unknown_labels_is_a_user_error(
    cli: Cli, run: mlsmith.Run, tmp_path: Path
) -> None:
    other = tmp_path / "other.csv"
    frame = make_table("binary", rows=10, seed=2)
    frame.loc[3, "label"] = "maybe"
    frame.to_csv(other, index=False)
    _assert_user_error(cli("evaluate", run.path, "--data", other), "maybe")


@pytest.mark.parametrize("verb", ["evaluate", "predict"])
def test_non_run_directory_is_a_user_error(cli: Cli, verb: str, tmp_path: Path) -> None:
    not_a_run = tmp_path / "somewhere"
    not_a_run.mkdir()
    extra = ["--input", tmp_path / "in.csv", "--output", tmp_path / "out.csv"]
    result = cli(verb, not_a_run, *(extra if verb == "predict" else []))
    _assert_user_error(result, "not a run directory")
    missing = cli(verb, tmp_path / "absent", *(extra if verb == "predict" else []))
    _assert_user_error(missing, "run directory not found")
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("checkpoints/best.pt", "checkpoint not found"),
        ("preprocessing.json", "the fitted preprocessing is missing"),
    ],
)
def test_incomplete_run_directory_is_a_user_error(
    cli: Cli, run: mlsmith.Run, tmp_path: Path, missing: str, message: str
) -> None:
    copy = Path(shutil.copytree(run.path, tmp_path / "run"))
    (copy / missing).unlink()
    source = tmp_path / "new.csv"
    _new_rows(rows=5).to_csv(source, index=False)
    output = tmp_path / "preds.csv"
    _assert_user_error(cli("predict", copy, "-i", source, "-o", output), message)
    assert not output.exists()
    _assert_user_error(cli("evaluate", copy), message)


# --- predict ------------------------------------------------------------------------------------


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".tsv"])
def test_predict_in_chunks_keeps_ids_and_matches_the_api(
    cli: Cli, run: mlsmith.Run, tmp_path: Path, suffix: str
) -> None:
    frame = _new_rows()
    source = tmp_path / "new.csv"
    frame.to_csv(source, index=False)
    output = tmp_path / f"preds{suffix}"
    result = cli(
        "predict", run.path, "--input", source, "--output", output, "--chunk-rows", "10",
        "--keep", "id",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(output)
    assert "wrote 45 predictions" in result.stderr
    written = _read(output)
    assert len(written) == len(frame)  # 5 chunks of at most 10 rows
    assert list(written.columns) == ["id", "prediction", "proba_no", "proba_yes"]
    assert written["id"].tolist() == frame["id"].tolist()
    expected = run.predict(frame)
    assert written["prediction"].tolist() == expected["prediction"].tolist()
    np.testing.assert_allclose(
        written[["proba_no", "proba_yes"]].to_numpy(),
        expected[["proba_no", "proba_yes"]].to_numpy(),
        rtol=1e-6,
    )
    assert not list(tmp_path.glob(".preds*"))


def test_predict_parquet_input_without_target_and_unseen_categories(
    cli: Cli, run: mlsmith.Run, tmp_path: Path
) -> None:
    frame = _new_rows(rows=23).drop(columns="label")
    frame.loc[::4, "color"] = "ultraviolet"  # never seen in training
    frame.loc[1, "color"] = None
    frame.loc[2, "x1"] = np.nan
    source = tmp_path / "new.parquet"
    frame.to_parquet(source, index=False)
    output = tmp_path / "preds.csv"
    result = cli("predict", run.path, "-i", source, "-o", output, "--chunk-rows", "5")
    assert result.code == 0, result.stderr
    written = pd.read_csv(output)
    assert len(written) == 23
    assert list(written.columns) == ["prediction", "proba_no", "proba_yes"]
    assert written.notna().all().all()
    np.testing.assert_allclose(written[["proba_no", "proba_yes"]].sum(axis=1), 1.0, atol=1e-6)
    assert written["prediction"].tolist() == run.predict(frame)["prediction"].tolist()


def test_predict_missing_feature_column(cli: Cli, run: mlsmith.Run, tmp_path: Path) -> None:
    source = tmp_path / "new.csv"
    _new_rows().drop(columns=["size"]).to_csv(source, index=False)
    output = tmp_path / "preds.csv"
    result = cli("predict", run.path, "--input", source, "--output", output)
    _assert_user_error(result, "feature column 'size' not found")
    assert not output.exists()


def test_predict_unsupported_output_suffix(cli: Cli, run: mlsmith.Run, tmp_path: Path) -> None:
    source = tmp_path / "new.csv"
    _new_rows().to_csv(source, index=False)
    output = tmp_path / "preds.json"
    result = cli("predict", run.path, "--input", source, "--output", output)
    _assert_user_error(result, "unsupported output type '.json'", ".csv or .parquet")
    assert not output.exists()


@pytest.mark.parametrize(
    ("keep", "message"),
    [("identifier", "--keep column 'identifier' not found"), ("prediction", "output column")],
)
def test_predict_bad_keep_column(
    cli: Cli, run: mlsmith.Run, tmp_path: Path, keep: str, message: str
) -> None:
    frame = _new_rows()
    frame["prediction"] = 0  # an input column named like an output column
    source = tmp_path / "new.csv"
    frame.to_csv(source, index=False)
    output = tmp_path / "preds.csv"
    result = cli("predict", run.path, "--input", source, "--output", output, "--keep", keep)
    _assert_user_error(result, message)
    assert not output.exists()


def test_predict_keep_column_typed_differently_in_a_later_chunk(
    cli: Cli, run: mlsmith.Run, tmp_path: Path
) -> None:
    frame = _new_rows(rows=30)
    frame["note"] = [None] * 10 + ["checked"] * 20  # the first chunk reads as all-NaN floats
    source = tmp_path / "new.csv"
    frame.to_csv(source, index=False)
    to_csv = cli("predict", run.path, "-i", source, "-o", tmp_path / "p.csv", "--chunk-rows", "10",
                 "--keep", "note", "--keep", "id", "--keep", "id")  # fmt: skip
    assert to_csv.code == 0, to_csv.stderr
    written = pd.read_csv(tmp_path / "p.csv")
    assert list(written.columns[:2]) == ["note", "id"]  # a column asked twice is kept once
    assert written["note"].isna().sum() == 10 and (written["note"] == "checked").sum() == 20
    output = tmp_path / "p.parquet"
    to_parquet = cli("predict", run.path, "-i", source, "-o", output, "--chunk-rows", "10",
                     "--keep", "note")  # fmt: skip
    _assert_user_error(to_parquet, "'note'", "changes type between chunks", "--chunk-rows")
    assert not output.exists()
    wide = cli("predict", run.path, "-i", source, "-o", output, "--keep", "note")
    assert wide.code == 0, wide.stderr
    notes = pd.read_parquet(output)["note"]
    assert notes.isna().sum() == 10 and notes.iloc[10] == "checked"


def test_predict_missing_input_file(cli: Cli, run: mlsmith.Run, tmp_path: Path) -> None:
    output = tmp_path / "preds.csv"
    result = cli("predict", run.path, "--input", tmp_path / "absent.csv", "--output", output)
    _assert_user_error(result, "data file not found")
    assert not output.exists()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_failed_predict_leaves_no_partial_file_and_keeps_the_old_one(
    cli: Cli, run: mlsmith.Run, tmp_path: Path, suffix: str
) -> None:
    frame = _new_rows(rows=60).astype({"x1": object})
    frame.loc[47, "x1"] = "not-a-number"  # in the 5th chunk of 10: four are already written
    source = tmp_path / "new.csv"
    frame.to_csv(source, index=False)
    output = tmp_path / f"preds{suffix}"

    result = cli("predict", run.path, "-i", source, "-o", output, "--chunk-rows", "10")
    _assert_user_error(result, "not-a-number", "x1")
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.csv"]

    output.write_bytes(b"previous predictions\n")
    result = cli("predict", run.path, "-i", source, "-o", output, "--chunk-rows", "10")
    assert result.code == 2
    assert output.read_bytes() == b"previous predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["new.csv", output.name])


def test_predict_replaces_an_existing_output(cli: Cli, run: mlsmith.Run, tmp_path: Path) -> None:
    source = tmp_path / "new.csv"
    _new_rows(rows=12).to_csv(source, index=False)
    output = tmp_path / "preds.csv"
    output.write_text("old\n")
    result = cli("predict", run.path, "-i", source, "-o", output)
    assert result.code == 0, result.stderr
    assert len(pd.read_csv(output)) == 12


def test_help_and_version(cli: Cli) -> None:
    result = cli("--help")
    assert result.code == 0
    for verb in ("train", "evaluate", "predict"):
        assert verb in result.stdout
    version = cli("--version")
    assert version.code == 0 and version.stdout.strip() == f"mlsmith {mlsmith.__version__}"
    unknown = cli("trian")
    assert unknown.code == 2 and "Traceback" not in unknown.stderr
    assert "No such command 'trian'" in unknown.stderr


def test_missing_required_option_is_a_usage_error(cli: Cli, run: mlsmith.Run) -> None:
    result = cli("predict", run.path, "--input", "x.csv")
    assert result.code == 2
    assert "Missing option '--output'" in result.stderr
    assert "Traceback" not in result.stderr
