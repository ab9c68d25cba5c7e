"""The package every run leaves: MLflow's format, raw rows in, ``mlsmith predict``'s outputs out.

One tiny run per family is trained once for the module (with the package on and MLflow tracking
to a real SQLite store); the tests load those packages the ways a user would: the runtime, the
MLflow pyfunc on the folder and on ``runs:/``, and a fresh virtual environment without torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tests.conftest import InferenceVenv, config_dict, make_table

import mlsmith
from mlsmith.errors import DataError, RunError

# family -> (data.type, task kind, model settings that keep the fit to a second or two)
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "mlp": ("tabular", "multiclass", {"hidden": [8], "dropout": 0.0}),
    "lightgbm": ("tabular", "binary", {"n_estimators": 20, "min_child_samples": 5}),
    "xgboost": ("tabular", "regression", {"n_estimators": 20}),
    "cnn": ("image", "multiclass", {"channels": [8, 16], "depth": 1}),
    "torchvision": ("image", "binary", {"arch": "resnet18"}),
    "bag": ("text", "binary", {"dim": 8, "buckets": 1024}),
    "transformer": ("text", "multiclass", {"dim": 16, "depth": 1, "heads": 2}),
}
TOLERANCE = 1e-5


@dataclass
class Trained:
    run: mlsmith.Run
    rows: pd.DataFrame  # raw rows to predict (no target)


def _data(root: Path, data_type: str, kind: str) -> tuple[dict[str, Any], pd.DataFrame]:
    if data_type == "tabular":
        frame = make_table(kind, rows=120, seed=3)
        frame.to_csv(root / "data.csv", index=False)
        return {"path": str(root / "data.csv"), "target": "label"}, frame.drop(columns="label")
    if data_type == "text":
        from tests.text_data import make_texts

        frame = make_texts(kind, rows=120, seed=3)
        frame.to_csv(root / "texts.csv", index=False)
        section = {"path": str(root / "texts.csv"), "target": "label"}
        return section | {"tokenizer": {"vocab_size": 200}}, frame.drop(columns="label")
    from tests.image_data import make_images, write_folder

    # Images of two sizes and modes: the package resizes and converts them as training did.
    images, labels = make_images(12, classes=2 if kind == "binary" else 3, size=(20, 16), seed=3)
    folder = write_folder(root / "images", images, labels)
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    return {"path": str(folder), "image_size": 16}, pd.DataFrame({"path": paths})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trained]:
    out: dict[str, Trained] = {}
    # One output folder, so one MLflow store for all the runs (creating one costs seconds);
    # each family its own experiment.
    runs = tmp_path_factory.mktemp("runs")
    for family, (data_type, kind, settings) in FAMILIES.items():
        root = tmp_path_factory.mktemp(family)
        section, rows = _data(root, data_type, kind)
        raw = config_dict("unused", runs, train={"epochs": 2, "batch_size": 16})
        raw["experiment"] = family
        raw["data"] = {"type": data_type, **section}
        raw["model"] = {"type": family, **settings}
        raw["export"] = {"package": True}
        raw["track"] = {"enabled": True}
        out[family] = Trained(mlsmith.train(raw, progress=False, epoch_lines=False), rows)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_packages_and_predicts_as_mlsmith_predict(
    trained: dict[str, Trained], family: str
) -> None:
    import mlflow.pyfunc

    run, rows = trained[family].run, trained[family].rows
    record = run.info["package"]
    assert record["status"] == "written", record
    package_dir = run.path / "package"
    assert (package_dir / "MLmodel").is_file()
    export = json.loads((package_dir / "data" / "mlsmith" / "export.json").read_text())
    served = export["formats"][export["serves"]]
    assert served["max_abs_diff"] <= TOLERANCE
    assert export["rows_checked"] > 0
    assert export["package_check"]["max_abs_diff"] <= TOLERANCE * 10

    expected = run.predict(rows)
    by_runtime = mlsmith.load_package(run.path).predict(rows)
    by_pyfunc = mlflow.pyfunc.load_model(str(package_dir)).predict(rows)
    for got in (by_runtime, by_pyfunc):
        assert list(got.columns) == list(expected.columns)
        _assert_same_predictions(got, expected)


def _assert_same_predictions(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    probabilities = [c for c in expected.columns if c.startswith("proba_")]
    if probabilities:
        assert (got["prediction"].astype(str) == expected["prediction"].astype(str)).all()
        np.testing.assert_allclose(got[probabilities], expected[probabilities], atol=TOLERANCE)
    else:  # regression, in the target's units
        np.testing.assert_allclose(got["prediction"], expected["prediction"], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_is_served_over_the_v2_protocol(
    trained: dict[str, Trained], family: str
) -> None:
    """The server's contract over every family: raw columns in as v2 tensors (numbers, text,
    images as base64 in JSON and as bytes in binary), the package's predictions out."""
    import base64

    from fastapi.testclient import TestClient

    from mlsmith.config.serve import ServeConfig
    from mlsmith.serving.app import create_app
    from mlsmith.serving.protocol import encode_bytes

    run, rows = trained[family].run, trained[family].rows.iloc[:5].reset_index(drop=True)
    expected = mlsmith.load_package(run.path).predict(rows)
    with TestClient(create_app(ServeConfig(models={"m": str(run.path)}))) as client:
        meta = client.get("/v2/models/m").json()
        assert [i["name"] for i in meta["inputs"]] == list(rows.columns)
        inputs, blobs, binary = [], [], []
        for spec in meta["inputs"]:
            values = rows[spec["name"]]
            if spec["name"] == "path":  # images: the files' bytes
                files = [Path(v).read_bytes() for v in values]
                data: list[Any] = [base64.b64encode(f).decode() for f in files]
                raw = np.empty(len(files), dtype=object)
                raw[:] = files
                blob = encode_bytes(raw)
            elif spec["datatype"] == "BYTES":
                data = [str(v) for v in values]
                blob = encode_bytes(np.asarray(data, dtype=object))
            else:
                data = [None if pd.isna(v) else float(v) for v in values]
                blob = values.to_numpy(np.float64).tobytes()
            tensor = {"name": spec["name"], "shape": [len(rows)], "datatype": spec["datatype"]}
            inputs.append(tensor | {"data": data})
            binary.append(tensor | {"parameters": {"binary_data_size": len(blob)}})
            blobs.append(blob)
        as_json = client.post("/v2/models/m/infer", json={"inputs": inputs})
        assert as_json.status_code == 200, as_json.text
        header = json.dumps({"inputs": binary}).encode()
        as_binary = client.post(
            "/v2/models/m/infer",
            content=header + b"".join(blobs),
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert as_binary.status_code == 200, as_binary.text
    for response in (as_json, as_binary):
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        got = pd.DataFrame({"prediction": outputs["prediction"]["data"]})
        if "probabilities" in outputs:
            proba = np.asarray(outputs["probabilities"]["data"]).reshape(len(rows), -1)
            for i, label in enumerate(outputs["probabilities"]["parameters"]["classes"]):
                got[f"proba_{label}"] = proba[:, i]
        _assert_same_predictions(got, expected)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mlp", "lightgbm", "xgboost", "bag", "cnn"])
def test_rows_as_numpy_columns_give_the_frame_paths_raw_outputs(
    trained: dict[str, Trained], family: str
) -> None:
    """The server hands a package numpy columns: tabular packages read them without a
    DataFrame (with categories, missing values and integer columns), other kinds through one;
    both give exactly the frame path's outputs, and a bad column the frame path's error."""
    package = mlsmith.load_package(trained[family].run.path)
    rows = trained[family].rows.reset_index(drop=True)
    columns = {c: rows[c].to_numpy() for c in rows.columns}
    if family == "mlp":
        columns["x1"] = columns["x1"].astype(np.float32).astype(np.float64)
        rows = pd.DataFrame(columns)
        assert package.encoder.transform_columns(columns, len(rows)) is not None  # the fast path
    expected = package.raw(rows)
    assert np.array_equal(package.raw_columns(columns, len(rows)), expected)
    if family in ("mlp", "lightgbm"):
        bad = dict(columns, x1=np.array(["oops"] * len(rows), dtype=object))
        with pytest.raises(DataError, match="numeric column 'x1' holds a non-numeric value"):
            package.raw_columns(bad, len(rows))


def test_package_metadata_names_raw_columns_and_only_inference_requirements(
    trained: dict[str, Trained],
) -> None:
    import mlflow.models

    for family in ("mlp", "bag", "cnn", "lightgbm"):
        package_dir = trained[family].run.path / "package"
        model = mlflow.models.Model.load(str(package_dir))
        inputs = model.signature.inputs.input_names()
        assert inputs == list(trained[family].rows.columns)
        assert model.signature.outputs.input_names()[0] == "prediction"
        requirements = (package_dir / "requirements.txt").read_text()
        names = {line.split("==")[0] for line in requirements.split() if "==" in line}
        assert "torch" not in names and "mlsmith" not in names, names
        assert {"mlflow-skinny", "numpy", "pandas"} <= names
        assert ("onnxruntime" in names) == (family not in ("lightgbm", "xgboost"))
        assert (package_dir / "code" / "mlsmith_runtime" / "package.py").is_file()
        assert (package_dir / "input_example.json").is_file()


@pytest.mark.slow
def test_logged_to_the_run_and_loadable_from_runs_uri(trained: dict[str, Trained]) -> None:
    import mlflow.pyfunc

    run = trained["mlp"].run
    uri = run.info["tracking_uri"]
    run_id = run.info["mlflow_run_id"]
    assert run.info["package"]["mlflow_model_id"]
    mlflow.set_tracking_uri(uri)
    try:
        loaded = mlflow.pyfunc.load_model(f"runs:/{run_id}/package")
        got = loaded.predict(trained["mlp"].rows)
    finally:
        mlflow.set_tracking_uri(None)
    _assert_same_predictions(got, run.predict(trained["mlp"].rows))
    package = mlsmith.load_package(f"runs:/{run_id}/package", tracking_uri=uri)
    _assert_same_predictions(package.predict(trained["mlp"].rows), run.predict(trained["mlp"].rows))


@pytest.mark.slow
def test_image_rows_may_carry_the_files_bytes(trained: dict[str, Trained]) -> None:
    import mlflow.pyfunc

    run, rows = trained["cnn"].run, trained["cnn"].rows
    as_bytes = pd.DataFrame({"path": [Path(p).read_bytes() for p in rows["path"]]})
    package = mlsmith.load_package(run.path)
    _assert_same_predictions(package.predict(as_bytes), package.predict(rows))
    pyfunc = mlflow.pyfunc.load_model(str(run.path / "package"))
    _assert_same_predictions(pyfunc.predict(as_bytes), package.predict(rows))


@pytest.mark.slow
def test_bad_rows_are_data_errors_naming_the_column(trained: dict[str, Trained]) -> None:
    package = mlsmith.load_package(trained["mlp"].run.path)
    rows = trained["mlp"].rows
    with pytest.raises(DataError, match="'x2' not found"):
        package.predict(rows.drop(columns="x2"))
    bad = rows.copy()
    bad["x1"] = bad["x1"].astype(object)
    bad.loc[0, "x1"] = "not a number"
    with pytest.raises(DataError, match="numeric column 'x1' holds a non-numeric value"):
        package.predict(bad)
    empty = package.predict(rows.head(0))
    assert len(empty) == 0 and "prediction" in empty.columns


def test_a_folder_that_is_no_package_is_a_run_error(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("experiment: x\n")
    with pytest.raises(RunError, match="mlsmith export"):
        mlsmith.load_package(tmp_path)
    with pytest.raises(RunError, match="not an mlsmith package"):
        mlsmith.load_package(tmp_path / "nothing")


def test_the_runtime_imports_without_torch_or_the_training_stack() -> None:
    """Every runtime module imports with torch, pydantic, sklearn and the rest of mlsmith
    made unimportable: the folder can travel alone inside a package."""
    code = """
import importlib, sys
for name in ("torch", "torchvision", "pydantic", "sklearn", "typer", "optuna", "matplotlib"):
    sys.modules[name] = None  # import fails
import mlsmith.runtime as runtime
for module in ("errors", "frames", "tabular", "text", "images", "outputs", "engines", "package",
               "pyfunc"):
    importlib.import_module(f"mlsmith.runtime.{module}")
loaded = sorted(m for m in sys.modules if m.startswith("mlsmith") and sys.modules[m] is not None)
outside = [m for m in loaded if m != "mlsmith" and not m.startswith("mlsmith.runtime")]
assert not outside, outside
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.slow
def test_packages_run_in_a_fresh_venv_without_torch_or_mlsmith(
    trained: dict[str, Trained], inference_venv: InferenceVenv, tmp_path: Path
) -> None:
    """The union of the packages' requirements.txt in a new venv (linked from the session's
    inference venv): no torch, no mlsmith; every family loads through mlflow.pyfunc, from its
    folder and as ``models:/<name>@champion`` from the registry, and predicts what ``mlsmith
    predict`` does."""
    requirements = sorted(
        {
            line.strip()
            for t in trained.values()
            for line in (t.run.path / "package" / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        }
    )
    # The session's inference venv was built from every requirement a package can have: each
    # line of every package's requirements.txt, pinned alike, is among them.
    missing = set(requirements) - set(inference_venv.requirements)
    assert not missing, (missing, inference_venv.requirements)
    # The registry here is a SQLite store, which the MLflow client reads through SQLAlchemy and
    # Alembic (a registry server would need neither): client-side needs, not the package's.
    store_client = ["sqlalchemy", "alembic"]
    python = inference_venv.holding([*requirements, *store_client], tmp_path / "venv")
    jobs = {}
    for family, t in trained.items():
        # JSON, not pickles: this environment's pandas may store text with pyarrow, which the
        # fresh one does not have.
        rows_file = tmp_path / f"{family}.json"
        rows_file.write_text(t.rows.to_json(orient="split"))
        mlsmith.register(t.run, family, alias="champion")
        jobs[family] = {
            "package": str(t.run.path / "package"),
            "rows": str(rows_file),
            "uri": t.run.info["tracking_uri"],
        }
    script = """
import json, sys
try:
    import torch  # noqa: F401
    sys.exit("torch is importable")
except ImportError:
    pass
try:
    import mlsmith  # noqa: F401
    sys.exit("mlsmith is importable")
except ImportError:
    pass
import mlflow.pyfunc, pandas as pd
jobs = json.loads(sys.argv[1])
for family, job in jobs.items():
    rows = pd.read_json(job["rows"], orient="split", dtype=False)
    out = mlflow.pyfunc.load_model(job["package"]).predict(rows)
    with open(job["rows"] + ".out", "w") as file:
        file.write(out.to_json(orient="split"))
    mlflow.set_tracking_uri(job["uri"])
    out = mlflow.pyfunc.load_model(f"models:/{family}@champion").predict(rows)
    with open(job["rows"] + ".registry.out", "w") as file:
        file.write(out.to_json(orient="split"))
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(python), "-c", script, json.dumps(jobs)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    for family, t in trained.items():
        expected = t.run.predict(t.rows)
        for suffix in (".out", ".registry.out"):
            got = pd.read_json(Path(jobs[family]["rows"] + suffix), orient="split", dtype=False)
            _assert_same_predictions(got, expected)


@pytest.mark.slow
def test_images_stored_as_arrays_package_with_png_bytes_as_the_example(tmp_path: Path) -> None:
    """An .npz names no image file: the package's signature reads the images' bytes (MLflow's
    JSON examples cannot hold them, so there is none), and rows of pixel arrays or PNG bytes
    predict as mlsmith predict does."""
    import mlflow.pyfunc
    from tests.image_data import image_config, make_images, write_npz

    images, labels = make_images(12, classes=2, size=(16, 16), seed=5)
    data = write_npz(tmp_path / "images.npz", images, labels)
    raw = image_config(data, tmp_path / "runs")
    raw["export"] = {"package": True}
    run = mlsmith.train(raw, progress=False, epoch_lines=False)
    assert run.info["package"]["status"] == "written", run.info["package"]
    pyfunc = mlflow.pyfunc.load_model(str(run.path / "package"))
    assert pyfunc.metadata.get_input_schema().input_names() == ["path"]
    rows = pd.DataFrame({"image": list(images[:6])})
    expected = run.predict(rows)
    _assert_same_predictions(mlsmith.load_package(run.path).predict(rows), expected)
    import io

    from PIL import Image

    files = []
    for image in images[:6]:
        buffer = io.BytesIO()
        pixels = image if image.ndim == 2 else image.transpose(1, 2, 0).squeeze(-1)
        Image.fromarray(pixels).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    _assert_same_predictions(pyfunc.predict(pd.DataFrame({"path": files})), expected)


@pytest.mark.slow
def test_integer_columns_accept_missing_values_through_the_pyfunc(tmp_path: Path) -> None:
    """The signature types integer features as doubles: a missing value (imputed by the
    package, as by mlsmith predict) is not a schema error."""
    import mlflow.pyfunc

    frame = make_table("binary", rows=120, seed=4)
    frame["size"] = frame["size"].astype("int64")
    frame.to_csv(tmp_path / "data.csv", index=False)
    raw = config_dict(tmp_path / "data.csv", tmp_path / "runs", export={"package": True})
    run = mlsmith.train(raw, progress=False, epoch_lines=False)
    pyfunc = mlflow.pyfunc.load_model(str(run.path / "package"))
    types = {c.name: str(c.type) for c in pyfunc.metadata.get_input_schema().inputs}
    assert types["size"].endswith("double"), types
    rows = frame.drop(columns="label").head(5).astype({"size": "float64"})
    rows.loc[0, "size"] = np.nan
    _assert_same_predictions(pyfunc.predict(rows), run.predict(rows))
