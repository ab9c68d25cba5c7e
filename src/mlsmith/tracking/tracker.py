"""The MLflow tracker: one mlsmith run as one MLflow run.

Tracking is a passenger, not the driver: if the store cannot be reached or fails mid-run, the
tracker warns once, switches itself off and training goes on; the run directory is always the
complete record.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mlsmith import interrupts
from mlsmith.config import Config, TrackConfig
from mlsmith.training.callbacks import Callback

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from mlsmith.tracking.mirrors import Mirror
    from mlsmith.training.callbacks import TrainingState

log = logging.getLogger(__name__)

T = TypeVar("T")
# MLflow accepts at most this many params (and this many metrics) in one log_batch call.
BATCH_LIMIT = 100
METRIC_BATCH_LIMIT = 1000


def default_uri(output_dir: str | Path) -> str:
    """The local SQLite store: ``<output_dir>/mlflow.db``."""
    return f"sqlite:///{(Path(output_dir).resolve() / 'mlflow.db').as_posix()}"


def _guarded(method: Callable[..., T]) -> Callable[..., T | None]:
    """Run a tracking call whole (a signal waits for its end: see :mod:`mlsmith.interrupts`); on
    any failure warn, switch tracking off and return None."""

    @functools.wraps(method)
    def wrapper(self: Tracker, *args: Any, **kwargs: Any) -> T | None:
        if self.client is None:
            return None
        try:
            with interrupts.shielded():
                return method(self, *args, **kwargs)
        except Exception as exc:  # any store failure must not stop training
            log.warning(
                "MLflow tracking failed (%s: %s); training continues without it and the run "
                "directory stays complete",
                type(exc).__name__,
                _first_line(exc),
            )
            self.client = None
            return None

    return wrapper


class Tracker(Callback):
    """Logs one mlsmith run as one MLflow run: params, per-epoch metrics, artifacts, tags."""

    def __init__(self, config: TrackConfig, *, output_dir: str | Path, experiment: str) -> None:
        self.uri = config.uri or default_uri(output_dir)
        self.experiment = config.experiment or experiment
        self.artifact_root = Path(output_dir).resolve() / "mlartifacts"
        self.client: MlflowClient | None = None
        self.run_id: str | None = None
        # Set by `mlsmith tune`: each trial's run is nested under the study's run.
        self.parent_run_id = config.parent_run_id
        self.backends = list(config.backends) if config.enabled else []
        # Trackers beside MLflow (track.backends), opened by start() once the run has a folder.
        self.mirrors: list[Mirror] = []
        self.wandb_mode = config.wandb_mode
        self.wandb_project = config.wandb_project or self.experiment
        self.wandb_entity = config.wandb_entity
        if config.enabled and "mlflow" in config.backends:
            self._connect()

    @classmethod
    def reopen(cls, config: Config, run_id: str | None) -> Tracker | None:
        """A tracker on an existing MLflow run (to add files, tags or a final status), or None
        when there is no such run or tracking is off."""
        if not run_id or not config.track.enabled:
            return None
        tracker = cls(config.track, output_dir=config.output_dir, experiment=config.experiment)
        tracker.run_id = run_id
        return tracker

    @property
    def active(self) -> bool:
        return self.client is not None and self.run_id is not None

    def _connect(self) -> None:
        from mlsmith.tracking.store import StoreUnavailable, prepare_store

        try:
            for name in ("alembic.runtime.migration", "alembic"):
                logging.getLogger(name).setLevel(logging.WARNING)
            # MLflow logs every failed SQL query at ERROR with a full traceback; the guarded
            # methods below already report a failure once, in one line.
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
            prepare_store(self.uri, self.artifact_root)
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri=self.uri)
        except StoreUnavailable as exc:
            log.warning(
                "MLflow tracking is off for this run (%s); training continues and the run "
                "directory stays complete",
                exc,
            )
            self.client = None
        except Exception as exc:
            log.warning(
                "MLflow tracking is off for this run (%s: %s); the run directory stays complete",
                type(exc).__name__,
                _first_line(exc),
            )
            self.client = None

    def start(
        self,
        *,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        resume_id: str | None = None,
        run_dir: Path | None = None,
        config_yaml: str = "",
    ) -> str | None:
        """Create (or reopen, when resuming) the MLflow run and return its id; with
        ``run_dir``, open the other backends of ``track.backends`` there (a missing extra is
        a MissingExtraError naming the install, before any training)."""
        if run_dir is not None:
            from mlsmith.tracking.mirrors import open_mirrors

            self.mirrors = open_mirrors(
                [b for b in self.backends if b != "mlflow"],
                run_dir=run_dir,
                params=params,
                config_yaml=config_yaml,
                project=self.wandb_project,
                run_name=run_name,
                wandb_mode=self.wandb_mode,
                wandb_entity=self.wandb_entity,
            )
        return self._start(run_name=run_name, params=params, tags=tags, resume_id=resume_id)

    @_guarded
    def _start(
        self,
        *,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        resume_id: str | None = None,
    ) -> str:
        assert self.client is not None
        if resume_id:
            self.client.update_run(resume_id, status="RUNNING")
            self.run_id = resume_id
            return resume_id
        experiment_id = self._experiment_id()
        if self.parent_run_id:
            tags = {**tags, "mlflow.parentRunId": self.parent_run_id}
        run = self.client.create_run(experiment_id, tags=tags, run_name=run_name)
        self.run_id = run.info.run_id
        self._log_params(params)
        return self.run_id

    def _experiment_id(self) -> str:
        """The experiment's id, creating it if needed; safe when runs start together."""
        from mlflow.exceptions import MlflowException

        assert self.client is not None
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = self.artifact_root.as_uri() if self.uri.startswith("sqlite") else None
        try:
            return str(self.client.create_experiment(self.experiment, artifact_location=location))
        except MlflowException as exc:
            # Another process created it between our lookup and our create.
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = self.client.get_experiment_by_name(self.experiment)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        assert self.client is not None and self.run_id is not None
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), BATCH_LIMIT):
            self.client.log_batch(self.run_id, params=items[i : i + BATCH_LIMIT])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Metrics at ``step`` (0 when None), to every backend."""
        self._mirror("log_metrics", metrics, step or 0)
        self._log_metrics(metrics, step)

    @_guarded
    def _log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        if self.client is None or self.run_id is None:
            return
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(items), BATCH_LIMIT):
            self.client.log_batch(self.run_id, metrics=items[i : i + BATCH_LIMIT])

    @_guarded
    def log_artifacts(self, paths: list[Path], artifact_path: str | None = None) -> None:
        if self.client is None or self.run_id is None:
            return
        for path in paths:
            if path.exists():
                self.client.log_artifact(self.run_id, str(path), artifact_path)

    @_guarded
    def log_package(self, package_dir: Path, name: str = "package") -> str | None:
        """Log a package folder as the run's MLflow model; returns the logged model's id.

        ``runs:/<run_id>/package`` and, once registered, ``models:/<name>@<alias>`` load it.
        """
        if self.client is None or self.run_id is None:
            return None
        from mlflow.entities import LoggedModelOutput

        run = self.client.get_run(self.run_id)
        model = self.client.create_logged_model(
            run.info.experiment_id, name=name, source_run_id=self.run_id, model_type="mlsmith"
        )
        self.client.log_model_artifacts(model.model_id, str(package_dir))
        self.client.finalize_logged_model(model.model_id, "READY")
        self.client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step=0)])
        return str(model.model_id)

    @_guarded
    def set_tags(self, tags: dict[str, str]) -> None:
        if self.client is None or self.run_id is None:
            return
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def finish(self, status: str = "FINISHED") -> None:
        """Close the run as FINISHED, FAILED or KILLED, in every backend."""
        mirrors, self.mirrors = self.mirrors, []
        for mirror in mirrors:
            self._mirror_call(mirror, "finish", status)
        self._finish(status)

    @_guarded
    def _finish(self, status: str = "FINISHED") -> None:
        if self.client is None or self.run_id is None:
            return
        self.client.set_terminated(self.run_id, status=status)

    # --- trainer callback ---------------------------------------------------------------------

    @contextmanager
    def closing_complete_run(self, run_dir: Path) -> Iterator[None]:
        """Around the tracking and reports of a run whose results are already recorded: the
        MLflow run ends FINISHED; a signal here ends it KILLED and leaves the run complete,
        its reports to write with ``mlsmith report``."""
        try:
            yield
        except BaseException as error:
            if interrupts.interruption(error) is None:
                raise
            self.finish("KILLED")
            log.warning(
                "stopped while tracking and writing reports; the run in %s is complete; "
                "`mlsmith report %s` writes its reports",
                run_dir,
                run_dir,
            )
            raise
        self.finish("FINISHED")

    def on_epoch_end(self, state: TrainingState, row: dict[str, float]) -> None:
        metrics = {k: v for k, v in row.items() if k not in ("epoch", "step")}
        self.log_metrics(metrics, step=int(row["epoch"]))
        from mlsmith.training.diagnostics import rows_of_epoch  # imports torch: not at load

        rows = rows_of_epoch(state.step_rows, int(row["epoch"]))
        first = int(rows[0][0]) if rows else None
        names = state.layer_names
        samples = [s for s in state.layer_rows if first is not None and s[0] >= first]
        self.log_steps(rows, names, samples)

    def log_steps(
        self,
        rows: list[tuple[float, ...]],
        layer_names: list[str] | None = None,
        layer_rows: list[tuple[float, ...]] | None = None,
    ) -> None:
        """Per optimizer step: the learning rate, the loss and the gradient norm before
        clipping, and on the sampled steps each layer's gradient norm (``layer_rows``:
        (step, norm of each of ``layer_names``)).

        Stepped by global step under ``step/...`` names, apart from the per-epoch metrics.
        """
        by_step: dict[int, dict[str, float]] = {}
        for step, _, lr, loss, grad_norm in rows:
            by_step[int(step)] = {"step/lr": lr, "step/loss": loss, "step/grad_norm": grad_norm}
        for step, *norms in layer_rows or []:
            values = by_step.setdefault(int(step), {})
            for name, norm in zip(layer_names or [], norms, strict=False):
                values[f"step/grad_norm/{name}"] = norm
        finite = {
            step: {k: float(v) for k, v in values.items() if math.isfinite(v)}
            for step, values in by_step.items()
        }
        for step, values in finite.items():
            self._mirror("log_step_metrics", values, step)
        self._log_steps(finite)

    @_guarded
    def _log_steps(self, by_step: dict[int, dict[str, float]]) -> None:
        from mlflow.entities import Metric

        if self.client is None or self.run_id is None:
            return
        now = int(time.time() * 1000)
        # The per-step loss is in steps.csv; MLflow keeps the rest (one metric per step less).
        items = [
            Metric(key, value, now, step)
            for step, values in by_step.items()
            for key, value in values.items()
            if key != "step/loss"
        ]
        for i in range(0, len(items), METRIC_BATCH_LIMIT):
            self.client.log_batch(self.run_id, metrics=items[i : i + METRIC_BATCH_LIMIT])

    def log_figures(self, figures: list[tuple[str, bytes]]) -> None:
        """The report's figures (title, PNG) to the backends beside MLflow (MLflow keeps the
        report itself as an artifact)."""
        if figures:
            self._mirror("log_figures", figures)

    def on_exception(self, state: TrainingState, error: BaseException) -> None:
        self.finish("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")

    # --- the other backends ---------------------------------------------------------------------

    def _mirror(self, method: str, *args: Any) -> None:
        for mirror in list(self.mirrors):
            self._mirror_call(mirror, method, *args)

    def _mirror_call(self, mirror: Mirror, method: str, *args: Any) -> None:
        """One call to a backend beside MLflow; a failure warns once and drops that backend."""
        try:
            with interrupts.shielded():
                getattr(mirror, method)(*args)
        except Exception as exc:  # a tracker must never stop training
            log.warning(
                "%s tracking failed (%s: %s); training continues without it and the run "
                "directory stays complete",
                mirror.name,
                type(exc).__name__,
                _first_line(exc),
            )
            if mirror in self.mirrors:
                self.mirrors.remove(mirror)


def _first_line(error: BaseException) -> str:
    text = str(error)
    return text.splitlines()[0][:300] if text else ""


def run_tags(run_dir: Path, fingerprint: str, environment: dict[str, Any]) -> dict[str, str]:
    """The MLflow tags of a training run: where it lives, its data and code versions."""
    from mlsmith.run import code_version

    tags = {
        "mlsmith.run_dir": str(run_dir),
        "mlsmith.data_fingerprint": fingerprint,
        "mlsmith.version": environment["mlsmith"],
        "mlsmith.device": environment["device"],
        "torch.version": environment["packages"].get("torch", "unknown"),
        "mlsmith.code_version": code_version(environment),
    }
    if environment.get("project_git"):
        tags["mlflow.source.git.commit"] = environment["project_git"]["commit"]
    return tags


def final_metrics(
    results: dict[str, dict[str, Any]], per_epoch: set[str] | frozenset[str] = frozenset()
) -> dict[str, float]:
    """``{"test": {"accuracy": {"value", "ci95"}}}`` to flat MLflow metrics.

    Point values whose key is in ``per_epoch`` are left out: the best epoch's value is already in
    that metric's history, and logging it again would add a second point at the same step.
    """
    flat: dict[str, float] = {}
    for split, metrics in results.items():
        for name, entry in metrics.items():
            if entry.get("value") is not None and f"{split}/{name}" not in per_epoch:
                flat[f"{split}/{name}"] = entry["value"]
            low, high = entry.get("ci95") or (None, None)
            if low is not None and high is not None:
                flat[f"{split}/{name}_ci95_low"] = low
                flat[f"{split}/{name}_ci95_high"] = high
    return flat
