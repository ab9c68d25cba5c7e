"""A run's package as a version of a registered model (``mlsmith register``, ``track.register``).

The version's source is the run's logged MLflow model (``models:/<model_id>``), so MLflow links
the version, the logged model and the training run. It carries what a reviewer needs to trust it
without opening the run: the test metrics with their 95% intervals (named as the run's MLflow
metrics, ``test/accuracy``, ``test/accuracy_ci95_low``...), the data fingerprint, the code version
and the export's parity figures (``mlsmith.parity.*``), with ``MODEL_CARD.md`` as its description.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsmith.errors import MlsmithError, RunError
from mlsmith.files import read_json
from mlsmith.registry.store import (
    NO_VERSION,
    alias_holder,
    check_alias,
    connect,
    mlflow_errors,
    process_uri,
    record_tags,
    user_error,
)
from mlsmith.run import Run, code_version
from mlsmith.runtime.package import DATA_DIR, EXPORT_FILE, PAYLOAD_DIR

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from mlsmith.config.export import RegisterConfig

log = logging.getLogger(__name__)

PACKAGE_DIR = "package"
MODEL_CARD_FILE = "MODEL_CARD.md"
# MLflow's SQL stores keep a model version's description in a VARCHAR(5000).
DESCRIPTION_LIMIT = 5000


@dataclass(frozen=True)
class RegisteredVersion:
    """A version of a registered model; ``uri`` (``models:/<name>/<version>``) loads it."""

    name: str
    version: str
    alias: str | None
    model_id: str
    run_id: str | None
    tracking_uri: str
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def register(
    run: Run, name: str, *, alias: str | None = None, tracking_uri: str | None = None
) -> RegisteredVersion:
    """Make ``run``'s logged package a new version of the registered model ``name``.

    The registered model is created if absent. The version is tagged (see the module docstring)
    and described by the run's ``MODEL_CARD.md`` when there is one; ``alias`` is then pointed at
    it, recording the version it moved from for ``promote --rollback``. The store is
    ``tracking_uri``, else the one the run was tracked to (``run.json``).
    """
    info = run.info
    model_id = _logged_model_id(run, info)
    if alias:
        check_alias(alias)  # before a version exists that the alias could not point at
    uri = tracking_uri or info.get("tracking_uri")
    if not uri:
        raise RunError(f"{run.path}: run.json names no MLflow store; pass --tracking-uri")
    client = connect(uri)
    _create_registered_model(client, name, uri)
    tags = version_tags(run, info)
    # MLflow logs that it waits for the version to be READY, which in its own stores it is at
    # once: not worth a line on the user's terminal.
    logging.getLogger("mlflow.store.model_registry.abstract_store").setLevel(logging.WARNING)
    with mlflow_errors(f"cannot register {run.path} as '{name}' in {uri}"), process_uri(uri):
        created = client.create_model_version(
            name,
            source=f"models:/{model_id}",
            run_id=info.get("mlflow_run_id"),
            tags=tags,
            description=_model_card(run.path),
            model_id=model_id,
        )
    version = str(created.version)
    if alias:
        previous = alias_holder(client, name, alias)
        with mlflow_errors(f"'{name}' version {version}: alias '{alias}'"):
            # Recorded first: an alias that moved without it could not be rolled back.
            record_tags(
                client,
                name,
                version,
                alias,
                {
                    "decision": "registered",
                    "previous_version": str(previous.version) if previous else NO_VERSION,
                },
            )
            client.set_registered_model_alias(name, alias, version)
    return RegisteredVersion(name, version, alias, model_id, info.get("mlflow_run_id"), uri, tags)


def register_after_training(run_dir: Path, settings: RegisterConfig) -> dict[str, Any]:
    """``track.register`` at the end of ``train``; returns what run.json records about it.

    A failure is a warning: the run is complete, and ``mlsmith register`` can try again.
    """
    try:
        version = register(Run(run_dir), settings.name, alias=settings.alias)
    except Exception as error:  # registering must never cost the user the run
        what = str(error) if isinstance(error, MlsmithError) else f"{type(error).__name__}: {error}"
        log.warning(
            "not registered as '%s' (%s); retry with `mlsmith register %s --name %s`",
            settings.name,
            what,
            run_dir,
            settings.name,
        )
        return {"status": "failed", "name": settings.name, "error": what}
    log.info(
        "registered: %s%s", version.uri, f" (alias '{version.alias}')" if version.alias else ""
    )
    return {
        "status": "registered",
        "name": version.name,
        "version": version.version,
        "alias": version.alias,
        "uri": version.uri,
    }


def version_tags(run: Run, info: dict[str, Any]) -> dict[str, str]:
    """What a version says about itself: its run, data, code, metrics with CIs and parity."""
    from mlsmith.tracking import final_metrics

    tags = {"mlsmith.run_dir": str(run.path), "mlsmith.run": run.id}
    if info.get("data_fingerprint"):
        tags["mlsmith.data_fingerprint"] = str(info["data_fingerprint"])
    if info.get("environment"):
        tags["mlsmith.code_version"] = code_version(info["environment"])
    metrics = run.metrics
    split = "test" if "test" in metrics else "val"
    if split in metrics:
        for key, value in final_metrics({split: metrics[split]}).items():
            tags[key] = repr(float(value))
    export_file = run.path / PACKAGE_DIR / DATA_DIR / PAYLOAD_DIR / EXPORT_FILE
    if export_file.is_file():
        export = read_json(export_file)
        tags["mlsmith.parity.serves"] = str(export.get("serves"))
        tags["mlsmith.parity.rows_checked"] = str(export.get("rows_checked"))
        for fmt, record in (export.get("formats") or {}).items():
            tags[f"mlsmith.parity.{fmt}.max_abs_diff"] = repr(float(record["max_abs_diff"]))
        check = export.get("package_check") or {}
        if "max_abs_diff" in check:
            tags["mlsmith.parity.package_check.max_abs_diff"] = repr(float(check["max_abs_diff"]))
            tags["mlsmith.parity.package_check.rows"] = str(check.get("rows"))
    return tags


def _logged_model_id(run: Run, info: dict[str, Any]) -> str:
    """The MLflow model the run's package was logged as; a RunError saying how to get one."""
    package = info.get("package") or {}
    if package.get("status") != "written" or not (run.path / PACKAGE_DIR / "MLmodel").is_file():
        raise RunError(
            f"{run.path}: the run has no package to register; write one with "
            f"`mlsmith export {run.path}`"
        )
    if not package.get("mlflow_model_id"):
        raise RunError(
            f"{run.path}: its package was not logged to MLflow (tracking was off or failed); "
            f"log it with `mlsmith export {run.path}` (the run must have been tracked)"
        )
    return str(package["mlflow_model_id"])


def _model_card(run_dir: Path) -> str | None:
    """``MODEL_CARD.md``, cut to what MLflow stores when longer (saying where the rest is)."""
    card = run_dir / MODEL_CARD_FILE
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8")
    if len(text) <= DESCRIPTION_LIMIT:
        return text
    note = f"\n\n... (cut at {DESCRIPTION_LIMIT} characters; the whole card is {card})"
    return text[: DESCRIPTION_LIMIT - len(note)] + note


def _create_registered_model(client: MlflowClient, name: str, uri: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise user_error(f"registered model '{name}' in {uri}", exc) from None
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        # Another process created it between our lookup and our create.
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise user_error(f"cannot create the registered model '{name}'", exc) from None
