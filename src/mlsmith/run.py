"""The run directory and the :class:`Run` object: paths, environment capture, evaluate, predict.

A run directory is the complete, self-describing record of one training run::

    <output_dir>/<experiment>/<run-id>/
        config.yaml          the fully resolved config
        run.json             status, timings, data fingerprint, environment, MLflow run id
        history.csv          one row per epoch
        steps.csv            one row per optimizer step: lr, loss, gradient norm
        preflight.json       the pre-flight checks run before training
        preprocessing.json   the fitted preprocessing (raw rows in, model inputs out)
        checkpoints/         best.pt and last.pt
        metrics.json         split -> metric -> {"value", "ci95"} (and a binary run's
                             "threshold" -> {"value", "chosen_on", "objective"}), plus the
                             sections in SECTION_KEYS (baseline, cv...); schema:
                             mlsmith/schemas/metrics.schema.json
        cv/fold-<k>/         each cross-validation fold's preprocessing, model and history
        confusion_matrix.json, test_predictions.csv   (classification / all tasks)
        report.html, REPORT.md, MODEL_CARD.md          the human-readable record
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import secrets
import subprocess
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsmith.config import Config, load_config
from mlsmith.errors import ConfigError, RunError, WriteError, describe_os_error
from mlsmith.files import read_json, write_json, write_text
from mlsmith.training.history import HISTORY_FILE

if TYPE_CHECKING:
    import pandas as pd

    from mlsmith.data.base import Preprocessor, Split
    from mlsmith.models.base import Model

CONFIG_FILE = "config.yaml"
INFO_FILE = "run.json"
PREFLIGHT_FILE = "preflight.json"
METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.json"
TEST_PREDICTIONS_FILE = "test_predictions.csv"
# metrics.json's cross-validation block (eval.cv), beside the splits: not a split itself.
CV_METRICS_KEY = "cv"
# Top-level keys of metrics.json that are not splits: the baseline beside the model, its
# majority-class floor, the model's paired difference to the baseline, cross-validation, and a
# forecast's baselines.
# A forecasting run's baselines (naive, seasonal naive...), each by split.
BASELINES_KEY = "baselines"
SECTION_KEYS = (
    "baseline",
    "majority",
    "vs_baseline",
    CV_METRICS_KEY,
    BASELINES_KEY,
    "slices",
)

# Libraries every run uses; families and data kinds add their own (see mlsmith.families).
PACKAGES = ("torch", "numpy", "pandas", "scikit-learn", "pydantic", "mlflow-skinny", "mlflow")
# Libraries that shape a run when a process has loaded them: optuna in a tuning trial,
# onnxruntime when a model is exported.
WHEN_IMPORTED = {"optuna": "optuna", "onnxruntime": "onnxruntime", "onnx": "onnx"}


def new_run_dir(config: Config) -> Path:
    """Create ``<output_dir>/<experiment>/<timestamp>-<random>`` and return it."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(config.output_dir) / config.experiment / f"{stamp}-{secrets.token_hex(2)}"
    try:
        path.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        raise WriteError(path, exc) from None
    return path.resolve()


def check_output_dir(output_dir: str | Path) -> None:
    """Fail fast, before any work, when runs cannot be written under ``output_dir``.

    Nothing is left behind: the nearest existing folder on the way must be a folder in which a
    file can be created (tried with an anonymous temporary file, which also catches read-only
    mounts and permissions that ``os.access`` misjudges, e.g. for root).
    """
    import tempfile

    path = Path(output_dir)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == path else f"is inside {existing}, which is a file"
        raise ConfigError(f"output_dir: {path} {what}, not a folder; choose another output_dir")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        where = "" if existing == path else f" (in {existing}, its nearest existing folder)"
        reason = describe_os_error(exc, with_path=False)
        raise ConfigError(
            f"output_dir: cannot write runs under {path}{where}: {reason}; choose another "
            "output_dir"
        ) from None


def git_state(directory: Path) -> dict[str, Any] | None:
    """Commit and dirtiness of the git work tree holding ``directory``, if any."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def capture_environment(device: str, config: Config | None = None) -> dict[str, Any]:
    """Code version, library versions and hardware, as modded-nanogpt logs at the top of a run.

    The libraries are every one that shaped the run: the core ones, those of the config's model
    family and data kind, those the process has loaded, and CUDA and cuDNN on a GPU.
    """
    from mlsmith import __version__, families

    names = list(PACKAGES)
    if config is not None:
        names += families.packages(config)
    names += [name for name, module in WHEN_IMPORTED.items() if module in sys.modules]
    versions = {}
    for package in dict.fromkeys(names):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    hardware: dict[str, Any] = {"cpu_count": _cpu_count(), "machine": platform.machine()}
    if device.startswith("cuda"):
        import torch

        hardware["gpu"] = torch.cuda.get_device_name(torch.device(device))
        versions["cuda"] = str(torch.version.cuda)
        versions["cudnn"] = str(torch.backends.cudnn.version())
    return {
        "mlsmith": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "device": device,
        "hardware": hardware,
        "project_git": git_state(Path.cwd()),
        "mlsmith_git": git_state(Path(__file__).parent),
        "command": " ".join(sys.argv),
    }


LOCK_FILE = "requirements.lock"
# Header lines of the lock: "# python: 3.11.7" and so on.
LOCK_KEYS = ("python", "platform", "cuda")


def lock_text(cuda: str | None = None) -> str:
    """The environment as a lock: a header, then ``name==version`` per installed distribution."""
    lines = [
        "# The environment this run ran in (pip install -r requirements.lock); written by mlsmith",
        f"# python: {platform.python_version()}",
        f"# platform: {platform.platform()}",
        f"# cuda: {cuda or 'none'}",
    ]
    versions = installed()
    lines += [f"{name}=={version}" for name, version in sorted(versions.items())]
    return "\n".join(lines) + "\n"


def write_lock(run_dir: Path, device: str) -> None:
    """``requirements.lock`` in ``run_dir`` (CUDA's version when the run trains on a GPU)."""
    cuda = None
    if device.startswith("cuda"):
        import torch

        cuda = str(torch.version.cuda)
    write_text(run_dir / LOCK_FILE, lock_text(cuda))


def installed() -> dict[str, str]:
    """Every installed distribution's version, by its normalised name."""
    versions = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            versions[_normalise(name)] = distribution.version
    return versions


def read_lock(run_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The lock's header (python, platform, cuda) and its package versions; both empty for a
    run written before runs had a lock."""
    file = run_dir / LOCK_FILE
    if not file.is_file():
        return {}, {}
    header, packages = {}, {}
    for line in file.read_text().splitlines():
        if line.startswith("# ") and ":" in line:
            key, _, value = line[2:].partition(":")
            if key.strip() in LOCK_KEYS:
                header[key.strip()] = value.strip()
        elif "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            packages[_normalise(name.strip())] = version.strip()
    return header, packages


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def code_version(environment: dict[str, Any]) -> str:
    """One line naming mlsmith's version and the commits of the project and of mlsmith."""
    parts = [f"mlsmith {environment['mlsmith']}"]
    for key in ("project_git", "mlsmith_git"):
        state = environment.get(key)
        if state:
            parts.append(
                f"{key.split('_')[0]} {state['commit'][:12]}{'+dirty' if state['dirty'] else ''}"
            )
    return ", ".join(parts)


def metrics_schema() -> dict[str, Any]:
    """The JSON Schema of ``metrics.json`` (``mlsmith/schemas/metrics.schema.json``)."""
    import json
    from importlib.resources import files

    schema: dict[str, Any] = json.loads(
        files("mlsmith").joinpath("schemas/metrics.schema.json").read_text(encoding="utf-8")
    )
    return schema


def record_sections(run_dir: Path, sections: dict[str, Any]) -> None:
    """Add top-level sections (``baseline``, ``cv``...) beside the splits in ``metrics.json``."""
    file = run_dir / METRICS_FILE
    content = read_json(file) if file.is_file() else {}
    write_json(file, {**content, **sections})


def record_stopped(
    run_dir: Path, info: dict[str, Any], error: BaseException, mlflow_run_id: str | None
) -> bool:
    """Write ``run.json`` of a run that stopped before finishing: ``interrupted`` when a signal
    stopped it (whatever a library made of the signal on its way up), else ``failed``, with a
    user error's message. True when interrupted.

    ``mlflow_run_id``: the tracker's run, recorded if the stop came between its creation and
    the id being written down.
    """
    from mlsmith import interrupts
    from mlsmith.errors import MlsmithError

    interrupted = interrupts.interruption(error) is not None
    info["status"] = "interrupted" if interrupted else "failed"
    if mlflow_run_id and not info.get("mlflow_run_id"):
        info["mlflow_run_id"] = mlflow_run_id
    if isinstance(error, MlsmithError):
        info["error"] = str(error)
    write_json(run_dir / INFO_FILE, info)
    return interrupted


def split_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``metrics.json`` without its sections: split -> metric -> {"value", "ci95"}."""
    return {k: v for k, v in metrics.items() if k not in SECTION_KEYS}


# The data kinds whose predictions are boxes or masks rather than a row per input row.
SCENE_KINDS = ("segmentation", "detection")


@dataclass
class Scored:
    """A split scored: its metrics, the truth and the model's decoded outputs."""

    metrics: dict[str, Any]
    truth: np.ndarray
    decoded: np.ndarray
    groups: np.ndarray | None = None  # a ranking's query ids


class Run:
    """A finished (or interrupted) run, loaded from its directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        if self.path.is_file():
            hint = (
                f"; its run directory is {self.path.parent}"
                if (self.path.parent / CONFIG_FILE).is_file()
                else ""
            )
            raise RunError(f"{self.path} is a file, not a run directory{hint}")
        if not self.path.is_dir():
            raise RunError(f"run directory not found: {self.path}")
        if not (self.path / CONFIG_FILE).is_file():
            raise RunError(f"{self.path}: not a run directory (no {CONFIG_FILE})")
        self.config: Config = load_config(self.path / CONFIG_FILE)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def info(self) -> dict[str, Any]:
        file = self.path / INFO_FILE
        return read_json(file) if file.is_file() else {}

    @property
    def history(self) -> pd.DataFrame:
        import pandas as pd

        file = self.path / HISTORY_FILE
        return pd.read_csv(file) if file.is_file() else pd.DataFrame()

    @property
    def metrics(self) -> dict[str, Any]:
        file = self.path / METRICS_FILE
        return read_json(file) if file.is_file() else {}

    @cached_property
    def preprocessor(self) -> Preprocessor:
        from mlsmith import families

        module = families.data_kind(self.config.data.type)
        try:
            preprocessor: Preprocessor = module.load_preprocessor(self.path)
        except FileNotFoundError:
            raise RunError(f"{self.path}: the fitted preprocessing is missing") from None
        return preprocessor

    @cached_property
    def model(self) -> Model:
        from mlsmith import families

        family = families.model_family(self.config.model.type)
        return family.load(self.path, self.config, self.preprocessor)

    # --- evaluation ---------------------------------------------------------------------------

    def evaluate(
        self, data: str | Path | pd.DataFrame | None = None, *, name: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """Metrics with confidence intervals, written into ``metrics.json`` under ``name``.

        Without ``data`` the run's own test split is rebuilt (from the seed, checked against the
        recorded data fingerprint) and scored with the best checkpoint.
        """
        from mlsmith import families

        if data is None:
            module = families.data_kind(self.config.data.type)
            prepared = module.prepare(self.config, preprocessor=self.preprocessor)
            recorded = self.info.get("data_fingerprint")
            if recorded and prepared.fingerprint != recorded:
                raise RunError(
                    f"the data at {self.config.data.path} changed since this run was trained "
                    f"(fingerprint {prepared.fingerprint}, recorded {recorded}); pass the data "
                    "to evaluate explicitly"
                )
            split, name = (prepared.test, "test") if prepared.test else (prepared.val, "val")
            return {name: self.evaluate_split(split, name)}
        if isinstance(data, (str, Path)):
            frame, label = self.preprocessor.read(str(data)), name or f"data:{Path(data).name}"
        else:
            frame, label = data, name or "data:frame"
        split = self.preprocessor.to_split(frame, label)
        if len(split) == 0:
            raise RunError(f"{label}: no labelled rows to evaluate")
        return {label: self.evaluate_split(split, label)}

    def evaluate_split(self, split: Split, name: str) -> dict[str, Any]:
        """Score the model on ``split``; record metrics (and, for the test split, predictions)."""
        return self.score_split(split, name).metrics

    def score_split(self, split: Split, name: str) -> Scored:
        """:meth:`evaluate_split`, also returning the truth and the model's decoded outputs."""
        from mlsmith.evaluation import confusion, evaluate_outputs
        from mlsmith.tasks import RankingTask
        from mlsmith.vision_tasks import SceneTask

        task = self.model.task
        decoded = self.model.predict(split.inputs)
        truth = task.truth(split.target)
        if isinstance(task, SceneTask):
            # Per image: intervals resample images, not pixels or boxes.
            metrics = task.evaluate(
                truth,
                decoded,
                resamples=self.config.eval.bootstrap,
                confidence=self.config.eval.confidence,
                seed=self.config.seed,
            )
            self._merge_json(METRICS_FILE, name, metrics)
            return Scored(metrics, truth, decoded)
        if isinstance(task, RankingTask):
            from mlsmith.ranking_metrics import evaluate_ranking

            if split.groups is None:
                raise RunError(f"{name}: a ranking is scored per query, and no query ids came")
            metrics = evaluate_ranking(
                truth,
                decoded,
                split.groups,
                task.ks,
                n_resamples=self.config.eval.bootstrap,
                confidence=self.config.eval.confidence,
                seed=self.config.seed,
            )
        else:
            metrics = evaluate_outputs(
                task.kind,
                truth,
                decoded,
                n_resamples=self.config.eval.bootstrap,
                confidence=self.config.eval.confidence,
                seed=self.config.seed,
                threshold=task.threshold,
            )
        if task.threshold is not None:
            # The threshold these labels were decided with, and where it came from.
            recorded = self.info.get("threshold") or {}
            metrics["threshold"] = {**recorded, "value": task.threshold}
        self._merge_json(METRICS_FILE, name, metrics)
        if task.is_classification:
            matrix = confusion(truth, decoded, task.threshold)
            self._merge_json(
                CONFUSION_FILE,
                name,
                {"labels": [str(c) for c in task.classes], "matrix": matrix},
            )
        if name == "test":
            self._write_predictions(truth, decoded, split.groups)
        return Scored(metrics, truth, decoded, split.groups)

    def record_sections(self, sections: dict[str, Any]) -> None:
        """Add top-level sections (``baseline``...) beside the splits in ``metrics.json``."""
        record_sections(self.path, sections)

    def _merge_json(self, filename: str, key: str, value: Any) -> None:
        file = self.path / filename
        content = read_json(file) if file.is_file() else {}
        content[key] = value
        write_json(file, content)

    def _write_predictions(
        self, truth: np.ndarray, decoded: np.ndarray, groups: np.ndarray | None = None
    ) -> None:
        from mlsmith.prediction import decoded_frame

        task = self.model.task
        frame = decoded_frame(task, decoded, groups)
        labels = np.asarray(task.classes, dtype=object)[truth] if task.is_classification else truth
        frame.insert(0, "target", labels)
        if groups is not None:
            frame.insert(0, "query", groups)
        write_text(self.path / TEST_PREDICTIONS_FILE, frame.to_csv(index=False))

    # --- prediction ---------------------------------------------------------------------------

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Predictions for raw rows: ``prediction`` plus ``proba_<class>`` for classification;
        for detection a row per box, for segmentation each image's ``mask``."""
        if self.config.data.type in SCENE_KINDS:
            from mlsmith.scene_prediction import predict_scenes

            return predict_scenes(self.model, frame)
        from mlsmith.prediction import predict_frame

        return predict_frame(self.model, frame)

    def predict_file(
        self,
        input_path: str | Path,
        output_path: str | Path,
        *,
        chunk_rows: int = 50_000,
        keep_columns: list[str] | None = None,
    ) -> int:
        """Predict a CSV/Parquet file of any size in constant memory; returns the row count.

        Detection and segmentation runs predict a folder of images (or one image) into a CSV
        or COCO results JSON of boxes, or a folder of PNG masks; returns the image count.
        """
        if self.config.data.type in SCENE_KINDS:
            from mlsmith.scene_prediction import predict_scene_files

            return predict_scene_files(
                self.model, str(input_path), Path(output_path), chunk_rows=min(chunk_rows, 256)
            )
        from mlsmith.prediction import predict_file

        return predict_file(
            self.model,
            str(input_path),
            Path(output_path),
            chunk_rows=chunk_rows,
            keep_columns=keep_columns,
        )


def cv_means(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The cross-validation block as one more split for a metrics table: ``{"cv mean": {metric:
    {"value": mean over the folds, "ci95": its t-interval}}}``; {} without CV."""
    held = (metrics.get(CV_METRICS_KEY) or {}).get("held_out") or {}
    if not held:
        return {}
    return {
        "cv mean": {
            name: {"value": entry.get("mean"), "ci95": entry.get("ci95")}
            for name, entry in held.items()
        }
    }


def load_run(path: str | Path) -> Run:
    """Open a run directory written by :func:`mlsmith.train`."""
    return Run(path)


def _cpu_count() -> int:

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
