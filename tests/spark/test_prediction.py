"""``mlsmith predict --engine spark``: a run's package on Apache Spark (local mode) predicts what
the local engine predicts, row for row, with executors that have neither mlsmith nor torch.

One tiny run (package on) is trained for the module. The executors' Python is a fresh venv
holding only the package's requirements.txt and pyarrow (no --system-site-packages), their files
linked from the session's inference venv; the tests point ``PYSPARK_PYTHON`` at it. User errors
are checked before Spark starts, so most of them cost no Spark session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import InferenceVenv, config_dict, make_table

import mlsmith
from mlsmith.errors import ConfigError, DataError, MissingExtraError, RunError
from mlsmith.spark.executor import CSV_MISSING, typed_like_read_csv

JAVA = shutil.which("java") or os.environ.get("JAVA_HOME")
needs_java = pytest.mark.skipif(
    not JAVA, reason="Spark needs Java 17 or 21: no java on the PATH and no JAVA_HOME"
)
# Spark's web UI is of no use in a test and costs start-up time.
NO_UI = ("--spark-conf", "spark.ui.enabled=false")
# The package is checked against the torch model to this tolerance when it is written.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> mlsmith.Run:
    """A tiny binary run with its package, trained in seconds on a few hundred rows."""
    root = tmp_path_factory.mktemp("spark-run")
    frame = _table(400, seed=1)
    frame.drop(columns="id").to_csv(root / "train.csv", index=False)
    raw = config_dict(root / "train.csv", root / "runs", train={"epochs": 2, "batch_size": 32})
    raw["data"] |= {"categorical": ["color", "zone"], "na_values": ["?"]}
    raw["export"] = {"package": True}
    return mlsmith.train(raw, progress=False, epoch_lines=False)


@pytest.fixture(scope="module", autouse=True)
def _stop_the_jvm() -> Iterator[None]:
    """Spark's JVM outlives its sessions for the life of the process; the rest of the suite
    does not need it."""
    yield
    if "pyspark" not in sys.modules:
        return
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    if gateway is not None:
        gateway.shutdown()
        process = getattr(gateway, "proc", None)
        if process is not None:
            process.stdin.close()  # the JVM pyspark starts exits when its stdin closes
            process.wait(timeout=30)
        SparkContext._gateway = None
        SparkContext._jvm = None


@pytest.fixture(scope="module")
def executor_venv(
    run: mlsmith.Run, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Path:
    """The executors' Python: a new venv with the package's requirements and pyarrow only."""
    if not JAVA:
        pytest.skip("Spark needs Java 17 or 21: no java on the PATH and no JAVA_HOME")
    inference_venv: InferenceVenv = request.getfixturevalue("inference_venv")
    requirements = [
        line.strip()
        for line in (run.path / "package" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    directory = tmp_path_factory.mktemp("executor") / "venv"
    return inference_venv.holding([*requirements, "pyarrow"], directory)


@pytest.fixture
def executors(executor_venv: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Spark's Python workers run the executor venv for this test."""
    monkeypatch.setenv("PYSPARK_PYTHON", str(executor_venv))
    return executor_venv


def _table(rows: int, seed: int) -> pd.DataFrame:
    """``make_table``'s binary table with an id and a categorical column of numeric codes."""
    frame = make_table("binary", rows=rows, seed=seed)
    rng = np.random.default_rng(seed + 1)
    frame.insert(0, "id", np.arange(rows, dtype=np.int64))
    frame["zone"] = rng.integers(1, 4, size=rows)
    return frame


def _assert_same_predictions(spark_output: Path, local_output: Path) -> None:
    """The Spark output folder, read back and sorted by id, against the local engine's file:
    the same columns and ids, probabilities within the package's tolerance, equal labels."""
    got = pd.read_parquet(spark_output).sort_values("id").reset_index(drop=True)
    expected = pd.read_parquet(local_output).sort_values("id").reset_index(drop=True)
    assert list(got.columns) == list(expected.columns)
    assert len(got) == len(expected)
    np.testing.assert_array_equal(got["id"].to_numpy(), expected["id"].to_numpy())
    probabilities = [c for c in expected.columns if c.startswith("proba_")]
    assert probabilities
    np.testing.assert_allclose(
        got[probabilities].to_numpy(), expected[probabilities].to_numpy(), atol=TOLERANCE
    )
    # ONNX and torch round differently in the last float32 bits: a row exactly on the decision
    # boundary may fall either side. Every other row has the same label.
    decided = (expected[probabilities].to_numpy().max(axis=1) - 0.5) > TOLERANCE
    assert decided.mean() > 0.999
    labels = got["prediction"].to_numpy()[decided] == expected["prediction"].to_numpy()[decided]
    assert labels.all()


def _no_temporaries(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


# --- what the executors run ----------------------------------------------------------------


def test_csv_missing_words_are_pandas_own() -> None:
    from pandas._libs.parsers import STR_NA_VALUES

    assert set(STR_NA_VALUES) == CSV_MISSING


def test_text_fields_are_typed_as_pandas_reads_the_csv(tmp_path: Path) -> None:
    text = "a,b,c,d,e,f,g\n1,1.5,x,True,NA,3,\n2,,y,false,,4.0,\n3,2e3,3,TRUE,null,?,\n"
    path = tmp_path / "t.csv"
    path.write_text(text)
    expected = pd.read_csv(path, na_values=["?"])
    as_text = pd.read_csv(path, dtype=str, keep_default_na=False)
    got = typed_like_read_csv(as_text, CSV_MISSING | {"?"})
    for column in expected.columns:
        assert got[column].dtype.kind == expected[column].dtype.kind or (
            expected[column].dtype.kind == "b" and got[column].map(type).eq(bool).all()
        ), column
        pd.testing.assert_series_equal(
            got[column].astype(object), expected[column].astype(object), check_dtype=False
        )


def test_the_executor_module_imports_nothing_of_mlsmith() -> None:
    """It is shipped by value to executors that have no mlsmith: an import of mlsmith there,
    even a lazy one inside a function, would fail only on a real cluster."""
    import ast

    import mlsmith.spark.executor as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = [
        alias.name if isinstance(node, ast.Import) else node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert not [name for name in imported if name.split(".")[0] == "mlsmith"], imported


# --- user errors, found before Spark starts --------------------------------------------------


def test_user_errors_exit_2_with_a_message_before_spark_starts(
    run: mlsmith.Run, cli: Callable, tmp_path: Path
) -> None:
    table = tmp_path / "rows.parquet"
    _table(50, seed=2).to_parquet(table)
    spark = ("--engine", "spark")
    cases = {
        "data file not found": ("--input", tmp_path / "nope.parquet", "--output", tmp_path / "o"),
        "is the input": ("--input", table, "--output", table),
        "holding the input": ("--input", table, "--output", tmp_path),
        "writes Parquet, as a folder": ("--input", table, "--output", tmp_path / "p.csv"),
        "unsupported file type '.json'": (
            "--input",
            tmp_path / "rows.json",
            "--output",
            tmp_path / "o",
        ),
    }
    (tmp_path / "rows.json").write_text("{}")
    for message, args in cases.items():
        result = cli("predict", run.path, *args, *spark)
        assert result.code == 2, (message, result.stderr)
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr

    result = cli("predict", run.path, "-i", table, "-o", tmp_path / "o.parquet", "--spark-master",
                 "local[2]")  # fmt: skip
    assert result.code == 2
    assert "--spark-master sets up Spark, which only --engine spark uses" in result.stderr
    result = cli("predict", run.path / "package", "-i", table, "-o", tmp_path / "o.parquet")
    assert result.code == 2
    assert "is a package folder, which --engine spark predicts" in result.stderr
    result = cli("predict", run.path, "-i", table, "-o", tmp_path / "o", "--engine", "sprak")
    assert result.code == 2
    assert "did you mean 'spark'" in result.stderr
    result = cli(
        "predict", run.path, "-i", table, "-o", tmp_path / "o", *spark, "--spark-conf", "x"
    )
    assert result.code == 2
    assert "KEY=VALUE" in result.stderr
    assert not (tmp_path / "o").exists()


def test_an_output_that_is_not_an_earlier_output_is_left_alone(
    run: mlsmith.Run, tmp_path: Path
) -> None:
    table = tmp_path / "rows.parquet"
    _table(50, seed=2).to_parquet(table)
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "keep.txt").write_text("precious")
    with pytest.raises(ConfigError, match="is not an earlier prediction output"):
        mlsmith.predict(run, table, mine, engine="spark")
    assert (mine / "keep.txt").read_text() == "precious"


def test_a_run_without_package_and_a_missing_pyspark_say_what_to_do(
    run: mlsmith.Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = tmp_path / "rows.parquet"
    _table(50, seed=2).to_parquet(table)
    bare = tmp_path / "bare-run"
    shutil.copytree(run.path, bare, ignore=shutil.ignore_patterns("package"))
    with pytest.raises(RunError, match="mlsmith export"):
        mlsmith.predict(bare, table, tmp_path / "o", engine="spark")
    monkeypatch.setitem(sys.modules, "pyspark", None)  # import pyspark now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'mlsmith\[spark\]'"):
        mlsmith.predict(run, table, tmp_path / "o", engine="spark")


# --- Spark in local mode ---------------------------------------------------------------------


def test_executors_have_neither_mlsmith_nor_torch(executors: Path) -> None:
    for module in ("mlsmith", "torch"):
        probe = subprocess.run(
            [str(executors), "-c", f"import {module}"],
            capture_output=True,
            text=True,
            env=os.environ.copy(),  # what Spark passes on to its Python workers
            cwd=executors.parent,
        )
        assert probe.returncode != 0, f"{module} is importable on the executors"
        assert "ModuleNotFoundError" in probe.stderr


@needs_java
@pytest.mark.slow
@pytest.mark.spark
def test_a_million_rows_on_spark_are_the_local_engines_predictions(
    run: mlsmith.Run, executors: Path, cli: Callable, tmp_path: Path
) -> None:
    """1,000,000 rows in Parquet (8 row groups, so both local[2] cores get work) through the
    CLI with Spark, and through the plain chunked path, compared row for row by id."""
    table = tmp_path / "big.parquet"
    _table(1_000_000, seed=7).drop(columns="label").to_parquet(table, row_group_size=125_000)
    out = tmp_path / "predictions"
    result = cli("predict", run.path, "-i", table, "-o", out, "--keep", "id",
                 "--engine", "spark", "--spark-master", "local[2]", *NO_UI)  # fmt: skip
    assert result.code == 0, result.stderr
    assert "wrote 1000000 predictions" in result.stderr
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) >= 2 and (out / "_SUCCESS").is_file()
    _no_temporaries(tmp_path)

    local = tmp_path / "local.parquet"
    result = cli("predict", run.path, "-i", table, "-o", local, "--keep", "id")
    assert result.code == 0, result.stderr
    _assert_same_predictions(out, local)


@needs_java
@pytest.mark.spark
def test_csv_is_read_as_the_local_engine_reads_it_and_an_earlier_output_replaced(
    run: mlsmith.Run, executors: Path, tmp_path: Path
) -> None:
    """A ';'-separated CSV with pandas' missing-value words and the run's own na_values ('?'),
    through the Python API with file:// URIs; then a Parquet table into the same output."""
    frame = _table(3_000, seed=4).drop(columns="label")
    frame["x2"] = frame["x2"].astype(object)
    frame.loc[::7, "x2"] = "NA"
    frame.loc[3::11, "x2"] = "?"
    frame.loc[5::13, "color"] = "null"
    table = tmp_path / "rows.csv"
    frame.to_csv(table, sep=";", index=False)
    out = tmp_path / "out"
    rows = mlsmith.predict(
        run,
        f"file://{table}",
        f"file://{out}",
        engine="spark",
        spark_master="local[2]",
        spark_conf={"spark.ui.enabled": "false"},
        keep_columns=["id"],
        chunk_rows=1_000,
    )
    assert rows == 3_000
    local = tmp_path / "local.parquet"
    mlsmith.predict(run, table, local, keep_columns=["id"])
    _assert_same_predictions(out, local)
    assert pd.read_parquet(out)["id"].dtype == np.int64  # typed as pandas types the CSV

    # A second job replaces the first output whole, and leaves no temporary folder behind.
    parquet = tmp_path / "rows.parquet"
    _table(500, seed=5).to_parquet(parquet)
    rows = mlsmith.predict(run, parquet, out, engine="spark", keep_columns=["id", "label"],
                           spark_conf={"spark.ui.enabled": "false"})  # fmt: skip
    assert rows == 500
    assert len(pd.read_parquet(out)) == 500
    assert list(pd.read_parquet(out).columns)[:2] == ["id", "label"]
    _no_temporaries(tmp_path)


@needs_java
@pytest.mark.spark
def test_bad_rows_on_the_executors_are_data_errors_and_nothing_is_written(
    run: mlsmith.Run, executors: Path, cli: Callable, tmp_path: Path
) -> None:
    frame = _table(200, seed=6).drop(columns="label")
    frame["x1"] = frame["x1"].astype(str)
    frame.loc[150, "x1"] = "abc"
    table = tmp_path / "bad.parquet"
    frame.to_parquet(table)
    out = tmp_path / "out"
    result = cli("predict", run.path, "-i", table, "-o", out, "--engine", "spark",
                 "--spark-master", "local[2]", *NO_UI)  # fmt: skip
    assert result.code == 2, result.stderr
    assert "numeric column 'x1' holds a non-numeric value 'abc'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    _no_temporaries(tmp_path)

    frame.drop(columns="color").to_parquet(table)
    with pytest.raises(DataError, match="feature column 'color' not found"):
        mlsmith.predict(run, table, out, engine="spark", spark_conf={"spark.ui.enabled": "false"})
    assert not out.exists()
