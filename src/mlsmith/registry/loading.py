"""Packages by name: loading one from a folder, a run or MLflow's model registry.

``models:/<name>@<alias>`` and ``runs:/<run_id>/package`` are MLflow's own URIs, resolved with
``tracking_uri`` (default: ``MLFLOW_TRACKING_URI``, then the local store under ``runs/``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlsmith.errors import RunError
from mlsmith.registry.store import download, first_line, resolve_tracking_uri
from mlsmith.runtime.forecaster import SavedForecaster
from mlsmith.runtime.loading import load
from mlsmith.runtime.package import PACKAGE_FILE, Package
from mlsmith.runtime.scene_package import ScenePackage

MLFLOW_URIS = ("runs:/", "models:/")
PACKAGE_DIR = "package"


def load_package(source: str | Path, *, tracking_uri: str | None = None) -> Package:
    """A package loaded for prediction from a package folder, a run folder (its ``package/``),
    ``runs:/<run_id>/package`` or ``models:/<name>@<alias>`` / ``models:/<name>/<version>``."""
    with package_folder(source, tracking_uri=tracking_uri) as folder:
        # Everything a package needs is read into memory here; a download can go afterwards.
        return Package(folder)


def load_any(
    source: str | Path, *, tracking_uri: str | None = None
) -> Package | SavedForecaster | ScenePackage:
    """:func:`load_package`, or for a forecasting run's package its forecaster
    (``predict(history, horizon)``), for a segmentation or detection run's its
    :class:`~mlsmith.runtime.scene_package.ScenePackage`."""
    with package_folder(source, tracking_uri=tracking_uri) as folder:
        return load(folder)


@contextmanager
def package_folder(source: str | Path, *, tracking_uri: str | None = None) -> Iterator[Path]:
    """The local folder of the package ``source`` names (as for :func:`load_package`), for as
    long as the ``with`` block lasts: an MLflow URI is downloaded into a scratch folder that is
    removed afterwards. A folder that is not a package is a RunError."""
    text = str(source)
    if text.startswith(MLFLOW_URIS):
        with tempfile.TemporaryDirectory(prefix="mlsmith-package-") as scratch:
            try:
                local = download(text, resolve_tracking_uri(tracking_uri), Path(scratch))
            except Exception as exc:  # MLflow raises its own types for unknown names and runs
                raise RunError(f"{text}: cannot be loaded ({first_line(exc)})") from None
            yield local
        return
    path = Path(source)
    if (path / PACKAGE_DIR / "MLmodel").is_file():
        path = path / PACKAGE_DIR
    if not (path / "MLmodel").is_file() and not (path / PACKAGE_FILE).is_file():
        hint = ""
        if (path / "config.yaml").is_file():
            hint = f"; it is a run without a package: write one with `mlsmith export {path}`"
        raise RunError(f"{path}: not an mlsmith package (no MLmodel){hint}")
    yield path
