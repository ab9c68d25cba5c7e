"""Bad tables that used to crash with a traceback or pass silently: each is now a one-line user
error, or a warning that names the column and the fix.

Each test trains for two epochs on a few hundred rows, so the whole file runs in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import CliResult, make_table

import mlsmith

Cli = Callable[..., CliResult]
WriteConfig = Callable[..., Path]

FAST = {"epochs": 2}


def _assert_user_error(result: CliResult, *fragments: str) -> None:
    assert result.code == 2, (result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert "\nerror: " in "\n" + result.stderr, result.stderr  # one line, not a traceback
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def _trained(result: CliResult) -> mlsmith.Run:
    assert result.code == 0, result.stdout + result.stderr
    return mlsmith.load_run(result.stdout.strip().splitlines()[-1])


def _check_row(result: CliResult, name: str) -> str:
    """The line of ``mlsmith check``'s table for the check called ``name``."""
    return next(line for line in result.stdout.splitlines() if f": {name} " in line)


# --- 1. nested Parquet columns ------------------------------------------------------------------


def _nested_frame(rows: int = 120) -> pd.DataFrame:
    frame = make_table("binary", rows=rows)
    frame["tags"] = [["a", "b", "c"][: i % 3] for i in range(rows)]
    frame["meta"] = [{"k": i, "s": "x"} for i in range(rows)]
    return frame


def test_nested_parquet_columns_are_named_with_their_type_and_the_fix(
    cli: Cli, write_config: WriteConfig, tmp_path: Path
) -> None:
    data = tmp_path / "nested.parquet"
    _nested_frame().to_parquet(data, index=False)
    config = write_config(data, train=FAST)
    fragments = ("nested.parquet", "'tags' (list)", "'meta' (struct)", "add them to data.drop")
    _assert_user_error(cli("train", config, "--no-progress"), *fragments)

    checked = cli("check", config, "--quick")
    assert checked.code == 1, checked.stdout + checked.stderr
    assert "Traceback" not in checked.stdout + checked.stderr
    row = _check_row(checked, "data readable")
    assert "fail" in row and all(f in row for f in fragments), row


def test_nested_columns_in_data_drop_train_and_nested_features_are_refused_later(
    cli: Cli, write_config: WriteConfig, tmp_path: Path
) -> None:
    data = tmp_path / "nested.parquet"
    _nested_frame().to_parquet(data, index=False)
    config = write_config(data, data={"drop": ["tags", "meta"]}, train=FAST)
    run = _trained(cli("train", config, "--no-progress"))

    # The dropped nested columns are not features: predicting on the same file just works.
    out = tmp_path / "preds.csv"
    result = cli("predict", run.path, "-i", data, "-o", out)
    assert result.code == 0, result.stderr
    assert len(pd.read_csv(out)) == 120

    # A feature that arrives holding lists is a user error naming it, not a traceback.
    changed = _nested_frame(30).assign(color=lambda f: f["tags"])
    changed_path = tmp_path / "changed.parquet"
    changed.to_parquet(changed_path, index=False)
    message = ("changed.parquet", "feature column 'color' holds list values")
    _assert_user_error(cli("predict", run.path, "-i", changed_path, "-o", out), *message)
    _assert_user_error(cli("evaluate", run.path, "--data", changed_path), *message)


# --- 2. the target in data.drop -----------------------------------------------------------------


def test_the_target_in_data_drop_is_a_config_error(
    cli: Cli, table_csv: Callable[..., Path], write_config: WriteConfig
) -> None:
    config = write_config(table_csv("binary", rows=60), data={"drop": ["x2", "label"]})
    _assert_user_error(
        cli("train", config, "--no-progress"),
        "invalid configuration",
        "data: drop: lists the target 'label'",
    )


# --- 3. numbers with a few stray strings --------------------------------------------------------


def _income_table(rows: int = 200) -> pd.DataFrame:
    frame = make_table("binary", rows=rows)
    frame.insert(0, "income", np.round(np.random.default_rng(3).normal(50, 10, rows), 1))
    frame["income"] = frame["income"].astype(object)
    frame.loc[[7, 90, 150], "income"] = ["?", "unknown", "-"]
    return frame


def test_a_numeric_column_with_stray_strings_warns_and_na_values_fixes_it(
    cli: Cli, write_config: WriteConfig, tmp_path: Path
) -> None:
    data = tmp_path / "income.csv"
    _income_table().to_csv(data, index=False)
    config = write_config(data, train=FAST)

    trained = cli("train", config, "--no-progress")
    assert trained.code == 0, trained.stderr
    for fragment in (
        "warning: ",
        "column 'income' looks numeric but is read as text",
        "197 of 200 values are numbers",
        "'?' (row 7), 'unknown' (row 90), '-' (row 150)",
        "data.na_values",
        "data.categorical",
    ):
        assert fragment in trained.stderr, trained.stderr

    checked = cli("check", config, "--quick")
    assert checked.code == 0, checked.stdout + checked.stderr
    row = _check_row(checked, "missing values")
    assert "warn" in row and "'income'" in row and "data.na_values" in row, row
    assert "1 warn" in checked.stdout or "2 warn" in checked.stdout, checked.stdout

    fixed = write_config(data, name="fixed.yaml", data={"na_values": ["?", "unknown", "-"]})
    run = _trained(cli("train", fixed, "--no-progress", "train.epochs=2"))
    assert "income" in run.preprocessor.numeric
    assert "looks numeric" not in cli("check", fixed, "--quick").stderr

    # A column that really is a category, listed as one, is not warned about.
    listed = write_config(data, name="listed.yaml", data={"categorical": ["income", "color"]})
    assert "looks numeric" not in cli("check", listed, "--quick").stderr


def test_na_values_apply_to_parquet_too(
    cli: Cli, write_config: WriteConfig, tmp_path: Path
) -> None:
    data = tmp_path / "income.parquet"
    frame = _income_table()
    frame["income"] = frame["income"].astype(str)  # a text column in the file
    frame.to_parquet(data, index=False)
    config = write_config(data, data={"na_values": ["?", "unknown", "-"]}, train=FAST)
    run = _trained(cli("train", config, "--no-progress"))
    assert "income" in run.preprocessor.numeric
    # Prediction reads the same strings as missing.
    out = tmp_path / "preds.parquet"
    assert cli("predict", run.path, "-i", data, "-o", out).code == 0


# --- 4. duplicated column names -----------------------------------------------------------------


def test_duplicated_csv_column_names_are_named_with_their_positions(
    cli: Cli, write_config: WriteConfig, tmp_path: Path
) -> None:
    data = tmp_path / "dup.csv"
    frame = make_table("binary", rows=60)
    frame["x1_again"] = frame["x1"] * 2
    frame.to_csv(data, index=False, header=[*frame.columns[:-1], "x1"])
    _assert_user_error(
        cli("train", write_config(data), "--no-progress"),
        "dup.csv",
        "column name 'x1' appears more than once (columns 1 and 6)",
        "rename",
    )


def test_duplicated_parquet_column_names_are_named_with_their_positions(
    cli: Cli, write_config: WriteConfig, tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = make_table("binary", rows=60)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.append_column("x2", table.column("x2"))
    data = tmp_path / "dup.parquet"
    pq.write_table(table, data)
    _assert_user_error(
        cli("train", write_config(data), "--no-progress"),
        "dup.parquet",
        "column name 'x2' appears more than once (columns 2 and 6)",
    )


# --- 5. separators ------------------------------------------------------------------------------


def test_a_semicolon_csv_is_read_with_semicolons_and_a_wrong_sep_gets_a_hint(
    cli: Cli, write_config: WriteConfig, tmp_path: Path
) -> None:
    data = tmp_path / "semi.csv"
    make_table("multiclass", rows=120).to_csv(data, index=False, sep=";")
    run = _trained(cli("train", write_config(data, train=FAST), "--no-progress"))
    assert run.preprocessor.categorical == ["color"]

    # Predict and evaluate read the same file the same way.
    out = tmp_path / "preds.csv"
    assert cli("predict", run.path, "-i", data, "-o", out).code == 0, "predict"
    assert cli("evaluate", run.path, "--data", data, "--json").code == 0, "evaluate"

    wrong = write_config(data, name="wrong.yaml", data={"sep": "|"})
    _assert_user_error(
        cli("train", wrong, "--no-progress"),
        "target column 'label' not found",
        "the file looks ';'-separated; set data.sep=';'",
    )


def test_auto_separator_is_logged(cli: Cli, write_config: WriteConfig, tmp_path: Path) -> None:
    data = tmp_path / "pipes.txt"
    make_table("binary", rows=80).to_csv(data, index=False, sep="|")
    result = cli("check", write_config(data), "--quick")
    assert result.code == 0, result.stdout + result.stderr
    assert "pipes.txt: no comma in the header; read as '|'-separated" in result.stderr


# --- 6. infinite regression targets -------------------------------------------------------------


def test_an_infinite_regression_target_is_named_with_its_row(
    cli: Cli, write_config: WriteConfig, tmp_path: Path
) -> None:
    data = tmp_path / "inf.csv"
    frame = make_table("regression", rows=80)
    frame.loc[33, "label"] = np.inf
    frame.to_csv(data, index=False)
    _assert_user_error(
        cli("train", write_config(data, train=FAST), "--no-progress"),
        "inf.csv: target 'label' holds an infinite value inf (row 33)",
    )


# --- 7. a numeric target with stray strings -----------------------------------------------------


def test_a_numeric_target_with_stray_strings_is_not_taken_for_classes(
    cli: Cli, write_config: WriteConfig, tmp_path: Path
) -> None:
    data = tmp_path / "price.csv"
    frame = make_table("regression", rows=120)
    frame["label"] = frame["label"].round(2).astype(object)
    frame.loc[[5, 60], "label"] = ["?", "unknown"]
    frame.to_csv(data, index=False)
    _assert_user_error(
        cli("train", write_config(data, train=FAST), "--no-progress"),
        "target 'label' looks numeric",
        "118 of 120 values are numbers",
        "'?' (row 5), 'unknown' (row 60)",
        "data.na_values",
        "data.task=multiclass",
    )
    # Read as missing, those rows are dropped and the rest is a regression.
    fixed = write_config(data, name="fixed.yaml", data={"na_values": ["?", "unknown"]})
    run = _trained(cli("train", fixed, "--no-progress", "train.epochs=2"))
    assert run.preprocessor.task.kind == "regression"


@pytest.mark.parametrize("labels", [["0", "1", "2"], ["A", "B"], ["1", "2", "x"]])
def test_class_labels_stored_as_text_still_classify(
    labels: list[str], cli: Cli, write_config: WriteConfig, tmp_path: Path
) -> None:
    data = tmp_path / "labels.parquet"  # Parquet keeps '0', '1', '2' as text
    frame = make_table("binary", rows=90)
    frame["label"] = [labels[i % len(labels)] for i in range(90)]
    frame.to_parquet(data, index=False)
    run = _trained(cli("train", write_config(data, train=FAST), "--no-progress"))
    assert [str(c) for c in run.preprocessor.task.classes] == labels
