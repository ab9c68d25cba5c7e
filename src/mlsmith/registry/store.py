"""The MLflow registry as mlsmith uses it: a client on one store, MLflow's errors turned into
mlsmith's, versions found by number or alias, and the tags a promotion leaves on a version.

MLflow resolves ``models:/`` URIs with a client on the *process's* tracking URI, whatever store
the calling client was given (its SQL registry store does so to find a logged model, with a TODO
saying so), so every call that hands MLflow such a URI runs inside :func:`process_uri`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from mlsmith.errors import ConfigError, MlsmithError, RunError, did_you_mean

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

# The value of a "previous_version" tag when no version held the alias before.
NO_VERSION = "none"
# MLflow's SQL stores keep a tag value in a VARCHAR(5000).
TAG_VALUE_LIMIT = 5000


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """The registry to talk to: the one given, else ``MLFLOW_TRACKING_URI``, else the local
    SQLite store ``runs/mlflow.db``."""
    from mlsmith.tracking import default_uri

    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri("runs")


def connect(uri: str) -> MlflowClient:
    """A client on the store at ``uri``; a clear error, fast, when there is none."""
    from mlflow import MlflowClient

    from mlsmith.tracking.store import StoreUnavailable, prepare_store

    # A mistyped path must be an error, not a new empty store.
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise RunError(f"no MLflow store at {uri}; pass --tracking-uri (or MLFLOW_TRACKING_URI)")
    if uri.startswith(("http://", "https://")):
        try:
            # Bounded retries, and one quick ping, so a server that is not there costs seconds.
            prepare_store(uri, Path("mlartifacts"))
        except StoreUnavailable as exc:
            raise RunError(str(exc)) from None
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextmanager
def process_uri(uri: str) -> Iterator[None]:
    """Make ``uri`` the process's MLflow tracking URI for a while (see the module docstring)."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(uri):
        yield


def download(uri: str, tracking_uri: str, destination: Path) -> Path:
    """Download a ``models:/`` or ``runs:/`` URI's files into ``destination``."""
    import mlflow.artifacts

    destination.mkdir(parents=True, exist_ok=True)
    # MLflow draws a progress bar per download on stderr, unless the user asked for one.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with process_uri(tracking_uri):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri,
            dst_path=str(destination),
            tracking_uri=tracking_uri,
            registry_uri=tracking_uri,
        )
    return Path(local)


@contextmanager
def mlflow_errors(what: str) -> Iterator[None]:
    """MLflow's errors as mlsmith's: one line naming ``what``, no traceback."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        raise user_error(what, exc) from None


def user_error(what: str, error: Exception) -> MlsmithError:
    """A bad name or value is the user's to fix (ConfigError); anything else a RunError."""
    invalid = getattr(error, "error_code", None) == "INVALID_PARAMETER_VALUE"
    return (ConfigError if invalid else RunError)(f"{what}: {first_line(error)}")


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def require_registered_model(client: MlflowClient, name: str, uri: str) -> None:
    """A RunError naming the store (and the closest name) when ``name`` is not registered."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise user_error(f"registered model '{name}' in {uri}", exc) from None
        known = [m.name for m in client.search_registered_models(max_results=1000)]
        raise RunError(
            f"no registered model '{name}' in {uri}{did_you_mean(name, known)}; register a run "
            f"with `mlsmith register RUN_DIR --name {name}`"
        ) from None


def resolve_version(client: MlflowClient, name: str, reference: str) -> ModelVersion:
    """A version by number, or the version an alias points at."""
    from mlflow.exceptions import MlflowException

    if reference.isdigit():
        try:
            return client.get_model_version(name, reference)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise user_error(f"'{name}' version {reference}", exc) from None
            raise RunError(f"'{name}' has no version {reference}") from None
    holder = alias_holder(client, name, reference)
    if holder is None:
        aliases = sorted(client.get_registered_model(name).aliases)
        known = f"its aliases: {', '.join(aliases)}" if aliases else "it has no aliases"
        raise RunError(
            f"'{name}' has no alias '{reference}'{did_you_mean(reference, aliases)} ({known}); "
            "name a version number or an alias"
        )
    return holder


def alias_holder(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` points at, or None when it points nowhere."""
    # Read from the registered model's alias table: MLflow reports a missing alias as an invalid
    # parameter, the same error as a malformed one.
    with mlflow_errors(f"registered model '{name}'"):
        version = client.get_registered_model(name).aliases.get(alias)
        return client.get_model_version(name, str(version)) if version is not None else None


def check_alias(alias: str) -> None:
    """A ConfigError, before anything is written, for an alias MLflow would refuse ("latest",
    "v3", characters it does not allow)."""
    from mlflow.utils.validation import (
        _validate_model_alias_name,
        _validate_model_alias_name_reserved,
    )

    with mlflow_errors(f"alias '{alias}'"):
        _validate_model_alias_name(alias)
        _validate_model_alias_name_reserved(alias)


def promotion_tag(alias: str, key: str) -> str:
    """The tag a promotion to ``alias`` leaves on a version: ``mlsmith.promotion.<alias>.<key>``."""
    return f"mlsmith.promotion.{alias}.{key}"


def record_tags(
    client: MlflowClient, name: str, version: str, alias: str, tags: dict[str, str]
) -> None:
    """Set ``mlsmith.promotion.<alias>.<key>`` tags on a version."""
    for key, value in tags.items():
        client.set_model_version_tag(
            name, version, promotion_tag(alias, key), value[:TAG_VALUE_LIMIT]
        )
