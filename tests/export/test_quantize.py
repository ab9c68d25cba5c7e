"""``--quantize int8`` and ``--prune AMOUNT``: the package serves the int8 or pruned network, says
so, and records how it compares with the model it came from on the check rows; trees and bad
values are refused with exit 2. Real ONNX Runtime quantization on tiny trained runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import CliResult, config_dict, make_table

import mlsmith
from mlsmith.errors import ConfigError


def _config(
    root: Path, output: str, data: dict[str, Any], model: dict[str, Any], **sections: Any
) -> Path:
    """A fast config (tests.conftest.config_dict) with this data and model section."""
    raw = config_dict("unused", root / output, **sections)
    raw["data"], raw["model"] = data, model
    config = root / f"{output}.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


def _train(cli: Callable[..., CliResult], root: Path, **sections: Any) -> Path:
    result = cli("train", _config(root, "runs", **sections))
    assert result.code == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


def _payload(package: Path) -> Path:
    return package / "data" / "mlsmith"


def _export_json(package: Path) -> dict[str, Any]:
    return json.loads((_payload(package) / "export.json").read_text())


def _assert_sane_comparison(record: dict[str, Any], before: str, after: str) -> None:
    assert record["metric"] == "accuracy"
    assert 0.0 <= record[before] <= 1.0 and 0.0 <= record[after] <= 1.0
    assert record["difference"] == pytest.approx(record[after] - record[before])
    low, high = record["ci95"]
    assert low <= record["difference"] <= high
    assert record["rows"] > 0


def _assert_predicts_like_mlsmith(package: Path, run_dir: Path, rows: Any) -> None:
    got = mlsmith.load_package(package).predict(rows)
    expected = mlsmith.load_run(run_dir).predict(rows)
    assert list(got.columns) == list(expected.columns)
    assert len(got) == len(rows)


@pytest.mark.slow
def test_mlp_packages_serve_int8_pruned_and_both(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    make_table("multiclass", rows=600, seed=1).to_csv(tmp_path / "data.csv", index=False)
    run_dir = _train(
        cli,
        tmp_path,
        data={"path": str(tmp_path / "data.csv"), "target": "label"},
        model={"type": "mlp", "hidden": [64, 64], "dropout": 0.0},
    )
    rows = make_table("multiclass", rows=40, seed=9).drop(columns="label")

    result = cli("export", run_dir, "--quantize", "int8")
    assert result.code == 0, result.stderr
    assert "serves onnx-int8" in result.stderr and "int8 vs float" in result.stderr
    package = run_dir / "package"
    export = _export_json(package)
    assert export["serves"] == "onnx-int8"
    info = json.loads((_payload(package) / "package.json").read_text())
    assert info["model_file"] == "model.int8.onnx" and info["engine"] == "onnx"
    # The float model is kept, and its parity record is the float export's, as without int8.
    assert (_payload(package) / "model.onnx").is_file()
    assert export["formats"]["onnx"]["max_abs_diff"] <= 1e-5
    quantized = export["quantized"]
    assert quantized["method"] == "dynamic" and quantized["file"] == "model.int8.onnx"
    int8_bytes = (_payload(package) / "model.int8.onnx").stat().st_size
    float_bytes = (_payload(package) / "model.onnx").stat().st_size
    assert int8_bytes < float_bytes
    assert quantized["size_ratio"] == pytest.approx(int8_bytes / float_bytes, abs=1e-4)
    assert quantized["size_ratio"] < 1
    assert set(quantized["speed_ratio"]) == {"batch_1", "batch_1024"}
    assert all(ratio > 0 for ratio in quantized["speed_ratio"].values())
    _assert_sane_comparison(quantized, "float_value", "int8_value")
    assert quantized["rows"] == export["rows_checked"]
    assert "no convolutions" in quantized["reason"]
    assert export["package_check"]["compared_with"] == "the network it serves"
    assert mlsmith.load_run(run_dir).info["package"]["serves"] == "onnx-int8"
    _assert_predicts_like_mlsmith(package, run_dir, rows)

    pruned_dir = tmp_path / "pruned"
    result = cli("export", run_dir, "--prune", "0.5", "--output", pruned_dir)
    assert result.code == 0, result.stderr
    assert "pruned vs dense" in result.stderr
    export = _export_json(pruned_dir)
    assert export["serves"] == "onnx-pruned" and "quantized" not in export
    pruned = export["pruned"]
    assert pruned["amount"] == 0.5
    assert pruned["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert 0 < pruned["fine_tune_steps"] <= 300
    _assert_sane_comparison(pruned, "dense_value", "pruned_value")
    # The served ONNX model is the pruned network, checked against it in torch.
    assert export["formats"]["onnx"]["max_abs_diff"] <= 1e-5
    served = json.loads((_payload(pruned_dir) / "package.json").read_text())["model_file"]
    onnx = pytest.importorskip("onnx")
    weights = [
        onnx.numpy_helper.to_array(t)
        for t in onnx.load(str(_payload(pruned_dir) / served)).graph.initializer
        if len(t.dims) == 2 and t.dims[0] == t.dims[1] == 64  # the 64x64 hidden layer
    ]
    assert weights and (weights[0] == 0).mean() > 0.3
    _assert_predicts_like_mlsmith(pruned_dir, run_dir, rows)

    both_dir = tmp_path / "both"
    result = cli("export", run_dir, "--prune", "0.5", "--quantize", "int8", "-o", both_dir)
    assert result.code == 0, result.stderr
    export = _export_json(both_dir)
    assert export["serves"] == "onnx-pruned-int8"
    assert export["pruned"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    # int8 is compared with the pruned float model it was made from.
    assert export["quantized"]["float_value"] == pytest.approx(export["pruned"]["pruned_value"])


@pytest.mark.slow
def test_cnn_trained_with_export_quantize_serves_the_better_int8_model(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    from tests.image_data import make_images, write_folder

    images, labels = make_images(20, classes=3, size=(16, 16), seed=3)
    folder = write_folder(tmp_path / "images", images, labels)
    run_dir = _train(
        cli,
        tmp_path,
        data={"type": "image", "path": str(folder), "image_size": 16},
        model={"type": "cnn", "channels": [16, 32], "depth": 1},
        train={"epochs": 2, "batch_size": 16},
        export={"package": True, "quantize": "int8"},
    )
    package = run_dir / "package"
    export = _export_json(package)
    assert export["serves"] == "onnx-int8"
    quantized = export["quantized"]
    # A graph with convolutions gets both candidates, and the record says which won and why.
    assert set(quantized["candidates"]) == {"dynamic", "static"}
    assert quantized["method"] in {"dynamic", "static"}
    assert quantized["reason"].startswith(quantized["method"] + ":")
    assert quantized["size_ratio"] < 1
    _assert_sane_comparison(quantized, "float_value", "int8_value")
    assert json.loads((_payload(package) / "package.json").read_text())["model_file"] == (
        "model.int8.onnx"
    )
    assert mlsmith.load_run(run_dir).info["package"]["serves"] == "onnx-int8"
    paths = sorted(str(p) for p in folder.rglob("*.png"))[:10]
    import pandas as pd

    _assert_predicts_like_mlsmith(package, run_dir, pd.DataFrame({"path": paths}))


@pytest.mark.slow
def test_bad_values_and_trees_exit_2_with_a_clear_message(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    for args, message in [
        (("--prune", "1.5"), "--prune: 1.5 is not between 0 and 1 (exclusive)"),
        (("--prune", "0"), "--prune: 0 is not between 0 and 1 (exclusive)"),
        (("--quantize", "int4"), "--quantize: unknown value 'int4'; choose from int8"),
    ]:
        result = cli("export", tmp_path, *args)
        assert result.code == 2, (args, result.stderr)
        assert message in result.stderr
        assert "Traceback" not in result.stderr

    make_table("binary", rows=200).to_csv(tmp_path / "data.csv", index=False)
    data = {"path": str(tmp_path / "data.csv"), "target": "label"}
    trees = {"type": "lightgbm", "n_estimators": 10, "min_child_samples": 5}
    run_dir = _train(cli, tmp_path, data=data, model=trees)
    for args in (("--quantize", "int8"), ("--prune", "0.5")):
        result = cli("export", run_dir, *args)
        assert result.code == 2, result.stderr
        assert "'lightgbm' is a boosted-tree family" in result.stderr
        assert f"{args[0]} / export.{args[0][2:]}: applies to networks" in result.stderr
    assert not (run_dir / "package").exists()
    with pytest.raises(
        ConfigError, match=r"export options: prune: expected less than 1, found 1\.5"
    ):
        mlsmith.export(run_dir, prune=1.5)

    # In the config, the refusal comes before any training: no run directory is left.
    config = _config(tmp_path, "refused", data, trees, export={"package": True, "quantize": "int8"})
    result = cli("train", config)
    assert result.code == 2
    assert "--quantize / export.quantize: applies to networks" in result.stderr
    assert not (tmp_path / "refused").exists()
