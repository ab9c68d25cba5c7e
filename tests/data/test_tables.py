"""Tests for mlsmith.data.tables: reading CSV/TSV/Parquet and built-ins, chunks, fingerprints."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import make_table

from mlsmith.data.tables import fingerprint, iter_table, read_table
from mlsmith.errors import DataError
from mlsmith.runtime.frames import require_columns

BUILTINS = {
    "iris": (150, 5),
    "wine": (178, 14),
    "breast_cancer": (569, 31),
    "diabetes": (442, 11),
    "digits": (1797, 65),
}


@pytest.fixture
def frame() -> pd.DataFrame:
    return make_table("multiclass", rows=30, seed=1)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix.lower() in (".parquet", ".pq"):
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    return path


# --- whole files ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["t.csv", "t.tsv", "t.txt", "T.CSV", "t.parquet", "t.pq"])
def test_read_table_formats(tmp_path: Path, frame: pd.DataFrame, name: str) -> None:
    path = _write(frame, tmp_path / name)
    read = read_table(str(path))

    assert list(read.columns) == list(frame.columns)
    assert len(read) == len(frame)
    pd.testing.assert_frame_equal(read, frame, check_exact=False, rtol=1e-12)
    assert read["x2"].isna().sum() == frame["x2"].isna().sum() > 0


def test_tsv_is_split_on_tabs(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text("name\tnote\n1\thas, commas\n2\tplain\n")
    read = read_table(str(path))
    assert read.shape == (2, 2)
    assert read["note"].tolist() == ["has, commas", "plain"]


def test_header_only_csv_reads_as_empty_table(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = _write(frame.head(0), tmp_path / "empty.csv")
    read = read_table(str(path))
    assert len(read) == 0
    assert list(read.columns) == list(frame.columns)


@pytest.mark.parametrize(("name", "shape"), BUILTINS.items())
def test_builtin_datasets(name: str, shape: tuple[int, int]) -> None:
    read = read_table(f"sklearn:{name}")
    assert read.shape == shape
    assert "target" in read.columns
    assert read["target"].notna().all()


def test_unknown_builtin_suggests_the_closest(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        read_table("sklearn:irs")
    message = str(info.value)
    assert "unknown built-in dataset 'sklearn:irs' (did you mean 'iris'?)" in message
    assert "sklearn:wine" in message and "sklearn:breast_cancer" in message


def test_unknown_builtin_without_close_match() -> None:
    with pytest.raises(DataError, match=r"unknown built-in dataset 'sklearn:mnist'; available"):
        read_table("sklearn:mnist")


@pytest.mark.parametrize("suffix", [".xlsx", ".json", ".gz", ""])
def test_unsupported_suffix(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DataError) as info:
        read_table(str(path))
    message = str(info.value)
    assert str(path) in message
    assert f"unsupported file type '{suffix}'" in message
    assert ".csv" in message and ".parquet" in message


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=re.escape(f"data file not found: {tmp_path / 'no.csv'}") + "$"
    ):
        read_table(str(tmp_path / "no.csv"))
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataError, match=r"dir\.csv \(it is a directory\)"):
        read_table(str(tmp_path / "dir.csv"))


@pytest.mark.parametrize(
    ("name", "content", "kind"),
    [
        ("empty.csv", b"", "csv"),
        ("ragged.csv", b"a,b\n1,2\n1,2,3,4\n", "csv"),
        ("latin1.csv", b"name\ncaf\xe9\n", "csv"),
        ("broken.parquet", b"PAR1 this is not parquet", "parquet"),
    ],
)
def test_unreadable_files_are_data_errors(
    tmp_path: Path, name: str, content: bytes, kind: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(f"{name}: cannot be read as {kind}")):
        read_table(str(path))


# --- chunks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["c.csv", "c.tsv", "c.parquet"])
@pytest.mark.parametrize(
    ("chunk", "sizes"), [(4, [4, 4, 4, 4, 4, 4, 4, 2]), (30, [30]), (100, [30])]
)
def test_iter_table_chunks(
    tmp_path: Path, frame: pd.DataFrame, name: str, chunk: int, sizes: list[int]
) -> None:
    path = _write(frame, tmp_path / name)
    chunks = list(iter_table(str(path), chunk))

    assert [len(c) for c in chunks] == sizes
    whole = pd.concat(chunks, ignore_index=True)
    pd.testing.assert_frame_equal(whole, read_table(str(path)))


def test_iter_table_builtin() -> None:
    chunks = list(iter_table("sklearn:iris", 64))
    assert [len(c) for c in chunks] == [64, 64, 22]
    pd.testing.assert_frame_equal(pd.concat(chunks), read_table("sklearn:iris"), check_like=False)


def test_iter_table_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        next(iter_table(str(tmp_path / "none.csv"), 10))
    (tmp_path / "bad.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"bad\.csv: cannot be read as csv"):
        next(iter_table(str(tmp_path / "bad.csv"), 10))
    (tmp_path / "x.xlsx").write_bytes(b"")
    with pytest.raises(DataError, match="unsupported file type"):
        next(iter_table(str(tmp_path / "x.xlsx"), 10))


# --- fingerprints -----------------------------------------------------------------------------


def test_fingerprint_is_stable_across_reads(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = _write(frame, tmp_path / "f.csv")
    first = fingerprint(read_table(str(path)))

    assert first == fingerprint(read_table(str(path)))
    assert len(first) == 16 and int(first, 16) >= 0
    assert fingerprint(read_table("sklearn:iris")) == fingerprint(read_table("sklearn:iris"))


def test_fingerprint_changes_with_any_single_value(tmp_path: Path, frame: pd.DataFrame) -> None:
    base = fingerprint(frame)
    seen = {base}
    for column in frame.columns:
        changed = frame.copy()
        value = changed.at[7, column]
        changed.at[7, column] = value + 1e-9 if isinstance(value, float) else f"{value}!"
        if isinstance(value, float) and np.isnan(value):
            changed.at[7, column] = 0.0
        seen.add(fingerprint(changed))
    assert len(seen) == 1 + len(frame.columns)


def test_fingerprint_changes_when_written_value_changes(
    tmp_path: Path, frame: pd.DataFrame
) -> None:
    path = _write(frame, tmp_path / "f.csv")
    before = fingerprint(read_table(str(path)))
    edited = frame.copy()
    edited.loc[3, "size"] = edited.loc[3, "size"] + 1
    _write(edited, path)
    assert fingerprint(read_table(str(path))) != before


def test_fingerprint_sees_order_names_and_types(frame: pd.DataFrame) -> None:
    base = fingerprint(frame)
    assert fingerprint(frame.iloc[::-1]) != base
    assert fingerprint(frame.rename(columns={"x1": "x_1"})) != base
    assert fingerprint(frame.astype({"size": "int64"})) != base
    # The index is not content: a reset or shifted index changes nothing.
    shifted = frame.copy()
    shifted.index = shifted.index + 100
    assert fingerprint(shifted) == base


# --- require_columns --------------------------------------------------------------------------


def test_require_columns_names_the_missing_column() -> None:
    table = pd.DataFrame(columns=["label", "x1"])
    require_columns(table, ["x1", "label"], "d.csv", "feature")
    with pytest.raises(DataError) as info:
        require_columns(table, ["x1", "lable"], "d.csv", "target")
    assert str(info.value) == (
        "d.csv: target column 'lable' not found (did you mean 'label'?); columns are: label, x1"
    )


def test_require_columns_lists_at_most_thirty() -> None:
    table = pd.DataFrame(columns=[f"c{i}" for i in range(40)])
    with pytest.raises(DataError) as info:
        require_columns(table, ["zzz"], "wide.csv", "feature")
    message = str(info.value)
    assert "c29" in message and "c30" not in message
    assert message.endswith(" ...")
