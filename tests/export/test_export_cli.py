"""``mlsmith export``: a run without a package gets one; every format is checked; a divergence
fails with exit 1 and leaves the previous package as it was."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import CliResult, make_table

import mlsmith
from mlsmith.packaging.writer import ExportError


def _train(cli: Callable[..., CliResult], config: Path) -> Path:
    result = cli("train", config)
    assert result.code == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def run_dir(
    cli: Callable[..., CliResult],
    table_csv: Callable[..., Path],
    write_config: Callable[..., Path],
) -> Path:
    return _train(cli, write_config(table_csv("binary", rows=200)))


@pytest.mark.slow
def test_export_writes_every_format_with_its_parity_record(
    cli: Callable[..., CliResult], run_dir: Path
) -> None:
    assert not (run_dir / "package").exists()  # the test config turns packaging off
    result = cli("export", run_dir, "--format", "onnx,torchscript")
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == str(run_dir / "package")
    assert "package checked on 30 rows of the test split" in result.stderr

    export = json.loads((run_dir / "package" / "data" / "mlsmith" / "export.json").read_text())
    assert export["serves"] == "onnx"
    assert set(export["formats"]) == {"onnx", "torchscript"}
    for record in export["formats"].values():
        assert record["max_abs_diff"] <= 1e-5
        assert record["bytes"] > 0
        assert set(record["latency_ms"]) == {"batch_1", "batch_1024"}
        assert record["latency_ms"]["batch_1024"]["rows"] == 1024
        assert record["latency_ms"]["batch_1"]["speedup_vs_torch"] > 0
    assert export["formats"]["onnx"]["opset"] >= 17
    assert export["rows_checked"] == 30 and export["rows_source"] == "test split"
    info = mlsmith.load_run(run_dir).info
    assert info["package"]["status"] == "written" and info["package"]["serves"] == "onnx"

    frame = make_table("binary", rows=30, seed=9).drop(columns="label")
    got = mlsmith.load_package(run_dir).predict(frame)
    expected = mlsmith.load_run(run_dir).predict(frame)
    assert (got["prediction"] == expected["prediction"]).all()
    np.testing.assert_allclose(got.filter(like="proba_"), expected.filter(like="proba_"), atol=1e-5)


def test_export_refuses_unknown_formats_and_folders_that_are_no_runs(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    result = cli("export", tmp_path, "--format", "tflite")
    assert result.code == 2
    assert "--format: unknown format 'tflite'; choose from onnx, torchscript" in result.stderr
    result = cli("export", tmp_path)
    assert result.code == 2
    assert "not a run directory" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_diverging_export_fails_and_leaves_the_previous_package(run_dir: Path) -> None:
    mlsmith.export(run_dir)
    export_file = run_dir / "package" / "data" / "mlsmith" / "export.json"
    before = export_file.read_text()

    run = mlsmith.load_run(run_dir)

    def differ_when_exported(
        module: torch.nn.Module, inputs: object, output: torch.Tensor
    ) -> torch.Tensor:
        # The graph the exporter traces adds 0.5 to every logit; eager torch does not.
        return output + 0.5 if torch.compiler.is_exporting() else output

    run.model.network.register_forward_hook(differ_when_exported)  # type: ignore[attr-defined]
    with pytest.raises(ExportError, match="the onnx export diverges from the torch model") as err:
        mlsmith.export(run)
    assert err.value.exit_code == 1
    assert "at check row" in str(err.value)
    assert export_file.read_text() == before
    leftovers = [p.name for p in run_dir.iterdir() if p.name.startswith(".package")]
    assert leftovers == []
