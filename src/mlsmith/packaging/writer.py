"""Writing ``<run>/package/``: the model in MLflow's format, verified before it appears.

The package is built in a temporary folder beside its destination: the payload (fitted
preprocessing, the exported network or the booster's own file, ``package.json``), the inference
code (:mod:`mlsmith.runtime`, copied in as ``mlsmith_runtime``) and MLflow's ``MLmodel`` with a
signature of the raw input columns, an input example and the requirements inference imports.
Then every format is run on the check rows against the torch model, and the finished package is
loaded by the runtime and compared, raw row by raw row, with ``mlsmith predict``. Only a package
that passed replaces the destination, in one rename; ``export.json`` says what was verified.

With ``export.prune`` the network is pruned and fine-tuned first (:mod:`.prune`) and that network
is exported and checked; with ``export.quantize`` the ONNX model is quantized (:mod:`.quantize`)
and the int8 file is served. Either way ``export.json`` says what the package serves and how it
compares with the model it came from, and the finished package is compared with the network it
serves rather than with ``mlsmith predict``, from which it differs by design.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.errors import ConfigError, MlsmithError
from mlsmith.files import fsync_directory, write_json
from mlsmith.packaging.measures import (
    LATENCY_BATCHES,
    Runner,
    median_ms,
    raw_outputs,
    repeats_for,
    timing_inputs,
)
from mlsmith.runtime import outputs as runtime_outputs
from mlsmith.runtime.package import (
    DATA_DIR,
    EXPORT_FILE,
    PACKAGE_FILE,
    PAYLOAD_DIR,
    PREPROCESSING_FILE,
    Encoder,
    Package,
    package_format,
)
from mlsmith.runtime.scene_package import SCENE_KINDS

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.config import ExportConfig
    from mlsmith.data.base import PreparedData, Split
    from mlsmith.models.base import Model

log = logging.getLogger(__name__)

PACKAGE_DIR = "package"
RUNTIME_NAME = "mlsmith_runtime"
# Rows the formats and the finished package are checked on (images are slower to decode).
CHECK_ROWS = 2_000
CHECK_IMAGES = 256
# Segmentation and detection images: a detector's graph runs one image at a time.
CHECK_SCENES = 32
EXAMPLE_ROWS = 5


class ExportError(MlsmithError):
    """An export does not reproduce the trained model (or cannot be made)."""

    exit_code = 1


@dataclass
class CheckRows:
    """Raw labelled rows the package is verified on, and where they came from."""

    frame: pd.DataFrame
    source: str


def check_rows(data: PreparedData) -> CheckRows | None:
    """The test split's raw rows (else validation's), at most :data:`CHECK_ROWS`."""
    for name, label in (("test", "test split"), ("val", "validation split")):
        frame = data.frames.get(name)
        if frame is not None and len(frame):
            kind = data.preprocessor.kind
            limit = {"image": CHECK_IMAGES, **dict.fromkeys(SCENE_KINDS, CHECK_SCENES)}.get(
                kind, CHECK_ROWS
            )
            return CheckRows(frame.head(limit).reset_index(drop=True), label)
    return None


@dataclass
class TrainingRows:
    """The training split, for what pruning and quantization learn from: its encoded rows (the
    fine-tune after pruning) and a sample of its raw rows (static quantization's calibration)."""

    split: Split
    frame: pd.DataFrame
    source: str = "training split"


def training_rows(data: PreparedData) -> TrainingRows | None:
    """The training split, with up to ``quantize.CALIBRATION_ROWS`` raw rows sampled from it
    (a seeded sample: a split need not be shuffled, and calibration should see every class)."""
    from mlsmith.packaging.quantize import CALIBRATION_ROWS

    frame = data.frames.get("train")
    if frame is None or not len(frame):
        return None
    sample = frame.sample(n=min(CALIBRATION_ROWS, len(frame)), random_state=0)
    return TrainingRows(data.train, sample.sort_index().reset_index(drop=True))


# Families packaged with their library's own model file rather than an ONNX network.
BOOSTERS = ("lightgbm", "xgboost")


def package_unsupported(model: Model) -> str | None:
    """Why ``model`` cannot be packaged, or None when it can.

    A scikit-learn estimator (model.type sklearn) has no package yet: a package serves ONNX or
    a booster's own file, and converting arbitrary estimators to ONNX needs skl2onnx, which is
    not a dependency (and converts only some estimators).
    """
    if _is_network(model) or model.family in BOOSTERS:
        return None
    return (
        f"model.type '{model.family}' cannot be packaged yet (a package serves an ONNX network "
        "or a LightGBM/XGBoost model file); the run itself is complete, and `mlsmith predict` "
        "and `mlsmith evaluate` use its model"
    )


def check_export_settings(model: Model, settings: ExportConfig) -> None:
    """Quantization and pruning change a network's ONNX graph: asking them of a boosted-tree
    or scikit-learn family is a ConfigError (exit 2), raised before any work; so is any of
    them, or a format but ONNX, asked of a segmentation or detection run."""
    if model.task.kind in SCENE_KINDS:
        asked = [f"--{k} / export.{k}" for k in ("quantize", "prune") if getattr(settings, k)]
        asked += [f"--format {f}" for f in settings.formats if f != "onnx"]
        if asked:
            raise ConfigError(
                f"{', '.join(asked)}: a {model.task.kind} run's package serves its network in "
                "ONNX as trained; leave them out"
            )
        return
    if _is_network(model):
        return
    what = "a boosted-tree" if model.family in BOOSTERS else "a scikit-learn"
    for key, value in (("quantize", settings.quantize), ("prune", settings.prune)):
        if value is not None:
            raise ConfigError(
                f"--{key} / export.{key}: applies to networks exported to ONNX; model.type "
                f"'{model.family}' is {what} family, which has no network to {key}"
            )


def write_package(
    run_dir: Path,
    model: Model,
    rows: CheckRows,
    settings: ExportConfig,
    *,
    output: Path | None = None,
    run_name: str | None = None,
    training: TrainingRows | None = None,
    reference: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Write and verify the package of ``model`` (saved in ``run_dir``); return export.json.

    Raises :class:`ExportError` when a format or the finished package diverges from the torch
    model by more than ``settings.tolerance``; nothing is written then. ``training`` (the
    training split) is needed when ``settings`` asks for quantization or pruning; ``reference``
    (raw training rows) gives the package the statistics drift is measured against.
    """
    if model.task.kind in SCENE_KINDS:
        raise ValueError("a segmentation or detection package: packaging.scenes writes it")
    check_export_settings(model, settings)
    unsupported = package_unsupported(model)
    if unsupported is not None:
        raise ExportError(unsupported)
    if (settings.quantize or settings.prune) and training is None:
        raise ExportError("quantization and pruning need the run's training split; none was given")
    target = Path(output) if output else Path(run_dir) / PACKAGE_DIR
    started = time.perf_counter()
    with package_workspace(target) as work:
        payload = work / PAYLOAD_DIR
        payload.mkdir()
        shutil.copyfile(Path(run_dir) / PREPROCESSING_FILE, payload / PREPROCESSING_FILE)
        encoder = Encoder(model.preprocessor.kind, model.preprocessor.to_dict())
        encoded = encoder.transform(rows.frame, rows.source)
        if _is_network(model):
            record = _export_network(model, encoder, encoded, payload, settings, rows, training)
        else:
            record = _export_booster(model, Path(run_dir), encoded, payload, settings)
        info = {
            "format_version": package_format(model.task.to_dict()),
            "family": model.family,
            "kind": model.preprocessor.kind,
            "engine": record["engine"],
            "model_file": record["model_file"],
            "batch_size": model.config.train.eval_batch_size,
            "run": run_name or Path(run_dir).name,
            "mlsmith_version": installed_version("mlsmith"),
        }
        write_json(payload / PACKAGE_FILE, info)
        export = {
            "serves": record["serves"],
            "tolerance": settings.tolerance,
            "rows_checked": len(rows.frame),
            "rows_source": rows.source,
            "formats": record["formats"],
        }
        export |= {key: record[key] for key in ("pruned", "quantized") if record.get(key)}
        write_json(payload / EXPORT_FILE, export)
        if reference is not None:
            from mlsmith.packaging.reference import write_reference

            write_reference(payload, reference, Path(run_dir))
        package_dir = work / PACKAGE_DIR
        _save_mlflow_model(package_dir, payload, encoder, rows, model, info)
        export["package_check"] = _check_package(
            package_dir, model, rows, settings.tolerance, record.get("served_raw")
        )
        export["seconds"] = round(time.perf_counter() - started, 2)
        write_json(package_dir / DATA_DIR / PAYLOAD_DIR / EXPORT_FILE, export)
        replace_folder(package_dir, target)
    return export


def package_payload(package_dir: Path) -> Path:
    """Where a package's payload (``package.json``, the model file...) lies."""
    return Path(package_dir) / DATA_DIR / PAYLOAD_DIR


# --- networks ---------------------------------------------------------------------------------


def _is_network(model: Model) -> bool:
    return hasattr(model, "network")


def _export_network(
    model: Model,
    encoder: Encoder,
    encoded: dict[str, np.ndarray],
    payload: Path,
    settings: ExportConfig,
    rows: CheckRows,
    training: TrainingRows | None,
) -> dict[str, Any]:
    """Export the network (pruned first, when asked) in every format, each checked against the
    torch network it came from; then, when asked, quantize the ONNX model to serve it in int8."""
    from mlsmith.packaging.formats import (
        ONNX_FILE,
        TORCHSCRIPT_FILE,
        EagerRunner,
        TorchScriptRunner,
        to_onnx,
        to_torchscript,
    )
    from mlsmith.packaging.graphs import inference_graph
    from mlsmith.runtime.engines import OnnxEngine

    network = copy.deepcopy(model.network).cpu().eval()  # type: ignore[attr-defined]
    batch_size = model.config.train.eval_batch_size
    n = len(next(iter(encoded.values())))
    example = encoder.batch(encoded, 0, min(n, 8))
    kind = model.task.kind
    pruned: dict[str, Any] | None = None
    if settings.prune is not None:
        from mlsmith.packaging.prune import prune_for_export

        assert training is not None  # write_package checked
        network, pruned = prune_for_export(
            model, network, settings.prune, encoder, encoded, _truth(model, rows), training.split
        )
    graph = inference_graph(network, model.preprocessor)
    eager = EagerRunner(graph)
    reference = raw_outputs(eager.raw, encoder, encoded, batch_size)
    formats: dict[str, dict[str, Any]] = {}
    outputs: dict[str, np.ndarray] = {}
    runners: dict[str, Runner] = {"torch": eager.raw}
    for name in ["onnx", *[f for f in settings.formats if f != "onnx"]]:
        if name == "onnx":
            record = to_onnx(graph, example, payload / ONNX_FILE)
            runner = OnnxEngine(payload / ONNX_FILE, providers=["CPUExecutionProvider"]).raw
        else:
            record = to_torchscript(graph, example, payload / TORCHSCRIPT_FILE)
            runner = TorchScriptRunner(payload / TORCHSCRIPT_FILE).raw
        outputs[name] = raw_outputs(runner, encoder, encoded, batch_size)
        record |= _parity(name, reference, outputs[name], kind)
        record["bytes"] = (payload / record["file"]).stat().st_size
        _require_parity(name, record, settings.tolerance)
        formats[name] = record
        runners[name] = runner
    _latencies(formats, runners, encoder, encoded)
    served: dict[str, Any] = {
        "engine": "onnx",
        "model_file": ONNX_FILE,
        "serves": "onnx-pruned" if pruned else "onnx",
        "formats": formats,
        "pruned": pruned,
        # What the finished package must reproduce when it does not serve the trained network.
        "served_raw": reference if pruned else None,
    }
    if settings.quantize is not None:
        assert training is not None
        served |= _quantized(
            model, encoder, encoded, payload / ONNX_FILE, outputs["onnx"], rows, training
        )
        served["serves"] += "-int8"
    return served


def _quantized(
    model: Model,
    encoder: Encoder,
    encoded: dict[str, np.ndarray],
    float_file: Path,
    float_raw: np.ndarray,
    rows: CheckRows,
    training: TrainingRows,
) -> dict[str, Any]:
    """The int8 model beside the float one: what the package now serves, and its record."""
    from mlsmith.packaging.quantize import QUANTIZED_FILE, Inputs, quantize_network

    inputs = Inputs(
        encoder=encoder,
        check=encoded,
        truth=_truth(model, rows),
        float_raw=float_raw,
        task=model.task,
        batch_size=model.config.train.eval_batch_size,
        resamples=model.config.eval.bootstrap,
        seed=model.config.seed,
    )
    calibration = encoder.transform(training.frame, training.source)
    record, int8_raw = quantize_network(float_file, inputs, calibration)
    return {"model_file": QUANTIZED_FILE, "quantized": record, "served_raw": int8_raw}


def _truth(model: Model, rows: CheckRows) -> np.ndarray:
    """The check rows' targets as metrics read them (class indices, or values)."""
    return model.task.truth(model.preprocessor.encode_target(rows.frame, rows.source))


def _compared(raw: np.ndarray, kind: str) -> np.ndarray:
    """What a user reads from raw outputs: probabilities, or the (standardised) value."""
    if kind == "binary":
        return runtime_outputs.binary_probabilities(raw)
    if kind == "multiclass":
        return runtime_outputs.softmax(raw)
    return raw.reshape(len(raw), -1)


def _parity(name: str, reference: np.ndarray, candidate: np.ndarray, kind: str) -> dict[str, Any]:
    ref, got = _compared(reference, kind), _compared(candidate, kind)
    diff = np.abs(ref - got)
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else (0, 0)
    return {
        "compared": {"regression": "standardised output", "ranking": "scores"}.get(
            kind, "probabilities"
        ),
        "max_abs_diff": float(diff.max(initial=0.0)),
        "max_abs_diff_raw": float(np.abs(reference - candidate).max(initial=0.0)),
        "worst_row": int(worst[0]),
        "worst_output": int(worst[1]) if len(worst) > 1 else 0,
    }


def _require_parity(name: str, record: dict[str, Any], tolerance: float) -> None:
    if record["max_abs_diff"] <= tolerance:
        return
    raise ExportError(
        f"the {name} export diverges from the torch model: max |difference| of the "
        f"{record['compared']} is {record['max_abs_diff']:.3g} (tolerance {tolerance:g}), "
        f"at check row {record['worst_row']}, output {record['worst_output']}; nothing was "
        "written. Raise export.tolerance only if that difference is acceptable"
    )


def _latencies(
    formats: dict[str, dict[str, Any]],
    runners: dict[str, Runner],
    encoder: Encoder,
    encoded: dict[str, np.ndarray],
) -> None:
    """Median milliseconds per call at batch 1 and batch 1,024, each format and torch eager."""
    for batch in LATENCY_BATCHES:
        size, inputs = timing_inputs(encoder, encoded, batch)
        timings = {name: median_ms(run, inputs, repeats_for(size)) for name, run in runners.items()}
        for name, record in formats.items():
            key = f"batch_{batch}"
            record.setdefault("latency_ms", {})[key] = {
                "rows": size,
                name: round(timings[name], 4),
                "torch": round(timings["torch"], 4),
                "speedup_vs_torch": round(timings["torch"] / max(timings[name], 1e-9), 3),
            }


# --- boosted trees ----------------------------------------------------------------------------


def _export_booster(
    model: Model,
    run_dir: Path,
    encoded: dict[str, np.ndarray],
    payload: Path,
    settings: ExportConfig,
) -> dict[str, Any]:
    from mlsmith.runtime.engines import LightGBMEngine, XGBoostEngine

    source = model.artifacts(run_dir)[0]
    if not source.is_file():
        raise ExportError(f"{source}: the {model.family} model file is missing; train again")
    shutil.copyfile(source, payload / source.name)
    n_outputs = model.task.n_outputs
    engine: LightGBMEngine | XGBoostEngine
    if model.family == "lightgbm":
        engine = LightGBMEngine(payload / source.name, n_outputs=n_outputs)
    else:
        pre = model.preprocessor
        engine = XGBoostEngine(
            payload / source.name,
            n_outputs=n_outputs,
            n_numeric=len(pre.numeric),  # type: ignore[attr-defined]
            n_categorical=len(pre.categorical),  # type: ignore[attr-defined]
        )
    reference = model.predict_raw(encoded)
    record: dict[str, Any] = {
        "file": source.name,
        "library": model.family,
        "version": installed_version(model.family),
    }
    record |= _parity(model.family, reference, engine.raw(encoded), model.task.kind)
    record["bytes"] = (payload / source.name).stat().st_size
    _require_parity(model.family, record, settings.tolerance)
    return {
        "engine": model.family,
        "model_file": source.name,
        "serves": model.family,
        "formats": {model.family: record},
    }


# --- the MLflow model -------------------------------------------------------------------------


def _save_mlflow_model(
    package_dir: Path,
    payload: Path,
    encoder: Encoder,
    rows: CheckRows,
    model: Model,
    info: dict[str, Any],
) -> None:
    from mlflow.models import infer_signature

    from mlsmith.prediction import predict_frame

    head = rows.frame.head(EXAMPLE_ROWS).reset_index(drop=True)
    example = _example(head, encoder)
    with warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold missing values: a ranking's ``rank``
        # never is missing, and integer inputs are read as numbers whatever their type.
        warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column.*")
        signature = infer_signature(example, predict_frame(model, head, rows.source))
    # MLflow stores examples as JSON, which holds no bytes: arrays' PNGs shape the signature only.
    save_pyfunc(
        package_dir,
        payload,
        signature=signature,
        input_example=None if _holds_bytes(example) else example,
        pip_requirements=requirements(info["kind"], info["engine"]),
        info=info,
    )


def save_pyfunc(
    package_dir: Path,
    payload: Path,
    *,
    signature: Any,
    input_example: Any,
    pip_requirements: list[str],
    info: dict[str, Any],
) -> None:
    """MLflow's model folder at ``package_dir``: the payload, :mod:`mlsmith.runtime` copied in
    as the loader's code, the signature, example and pinned requirements."""
    with warnings.catch_warnings():
        # MLflow's own response types warn about their type hints when first imported.
        warnings.simplefilter("ignore", UserWarning)
        import mlflow.pyfunc

    # MLflow announces at INFO that it loads the package to validate the example: it is ours.
    logging.getLogger("mlflow.pyfunc").setLevel(logging.WARNING)
    code = payload.parent / RUNTIME_NAME
    shutil.copytree(
        Path(__file__).resolve().parents[1] / "runtime",
        code,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    with warnings.catch_warnings():
        # Without an example (images) MLflow advises adding one; the signature says it all.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column.*")
        mlflow.pyfunc.save_model(
            str(package_dir),
            loader_module=f"{RUNTIME_NAME}.pyfunc",
            data_path=str(payload),
            code_paths=[str(code)],
            signature=signature,
            input_example=input_example,
            pip_requirements=pip_requirements,
            metadata={"mlsmith": {k: info[k] for k in ("family", "kind", "engine", "run")}},
        )


def _example(frame: pd.DataFrame, encoder: Encoder) -> pd.DataFrame:
    """Rows a user of the package could send: its input columns; images stored as arrays (an
    .npz) become the PNG files' bytes, since their "paths" name no file."""
    import io

    import pandas as pd

    from mlsmith.runtime.images import ARRAY, PATH, pillow

    if encoder.kind != "image" or ARRAY not in frame.columns:
        example = frame[encoder.columns]
        # Integer columns as floats: the package imputes a missing number, and a signature of
        # integers would make MLflow refuse the NaN that stands for it.
        integers = [c for c in example.columns if pd.api.types.is_integer_dtype(example[c])]
        return example.astype(dict.fromkeys(integers, "float64"))
    image = pillow()
    files = []
    for pixels in frame[ARRAY]:
        array = np.asarray(pixels)
        buffer = io.BytesIO()
        image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)).save(
            buffer, format="PNG"
        )
        files.append(buffer.getvalue())
    return frame.assign(**{PATH: files})[[PATH]]


def _holds_bytes(frame: pd.DataFrame) -> bool:
    return any(isinstance(value, bytes) for value in frame.iloc[:1].to_numpy().ravel())


def requirements(kind: str, engine: str) -> list[str]:
    """The packages inference imports, pinned to the versions the package was verified with."""
    names = ["mlflow-skinny", "numpy", "pandas"]
    names += {"onnx": ["onnxruntime"], "lightgbm": ["lightgbm"], "xgboost": ["xgboost"]}[engine]
    names += {"text": ["tokenizers"], "image": ["pillow"]}.get(kind, [])
    return [f"{name}=={installed_version(name)}" for name in names]


def installed_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "0"


def _check_package(
    package_dir: Path,
    model: Model,
    rows: CheckRows,
    tolerance: float,
    served_raw: np.ndarray | None = None,
) -> dict[str, Any]:
    """Load the finished package with the runtime and compare it with ``mlsmith predict``.

    A package serving a pruned or int8 network differs from the trained model by design: its
    values are compared with that network's own outputs (``served_raw``, on the check rows),
    its columns still with ``mlsmith predict``'s.
    """
    from mlsmith.prediction import decoded_frame, predict_frame

    package = Package(package_dir, providers=["CPUExecutionProvider"])
    got = package.predict(rows.frame, rows.source)
    expected = predict_frame(model, rows.frame, rows.source)
    if list(got.columns) != list(expected.columns):
        raise ExportError(
            f"the package's output columns {list(got.columns)} differ from mlsmith predict's "
            f"{list(expected.columns)}"
        )
    if served_raw is not None:
        expected = decoded_frame(model.task, model.task.decode(served_raw))
        expected.index = got.index
    numbers = [c for c in got.columns if c.startswith("proba_")] or [
        "score" if model.task.kind == "ranking" else "prediction"
    ]
    diff = float(np.abs(got[numbers].to_numpy(float) - expected[numbers].to_numpy(float)).max())
    labels_equal = not model.task.is_classification or bool(
        (got["prediction"] == expected["prediction"]).all()
    )
    scale = 1.0 if model.task.is_classification else float(getattr(model.task, "std", 1.0))
    what = "the network it serves" if served_raw is not None else "mlsmith predict"
    if diff > tolerance * scale or (model.task.is_classification and not labels_equal):
        raise ExportError(
            f"the finished package does not reproduce {what} on the {rows.source}: "
            f"max |difference| {diff:.3g}"
            + ("" if labels_equal else ", and some predicted labels differ")
        )
    record: dict[str, Any] = {"rows": len(rows.frame), "max_abs_diff": diff, "compared_with": what}
    if model.task.is_classification:
        record["labels_equal"] = labels_equal
    return record


# --- files ------------------------------------------------------------------------------------


@contextmanager
def package_workspace(target: Path) -> Iterator[Path]:
    """A scratch folder beside ``target`` (same file system, so the final move is a rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def replace_folder(new: Path, target: Path) -> None:
    """Put the folder ``new`` at ``target`` with renames: a reader sees the old or the new."""
    old = None
    if target.exists():
        old = new.parent / "previous"
        os.replace(target, old)
    os.replace(new, target)
    fsync_directory(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
