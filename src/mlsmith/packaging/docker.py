"""``mlsmith export --dockerfile``: a Dockerfile that serves a package with ``mlsmith serve``.

The Dockerfile lies in the package folder, so ``docker build <run>/package`` builds it: a slim
Python of the version the package was written with, the package's own pinned requirements
(``requirements.txt``: what inference imports), mlsmith with its ``[serve]`` extra (the
``MLSMITH`` build argument overrides where it comes from: a version, a wheel, a git URL), an
unprivileged user, a health check on ``/v2/health/ready``, and ``mlsmith serve`` on port 8080.
"""

from __future__ import annotations

import platform
from pathlib import Path

from mlsmith.errors import RunError
from mlsmith.files import write_text

DOCKERFILE = "Dockerfile"
PORT = 8080


def dockerfile_text(version: str, python: str | None = None) -> str:
    """The Dockerfile for a package folder (see the module)."""
    major_minor = python or ".".join(platform.python_version_tuple()[:2])
    return f"""\
# Serves this mlsmith package: docker build -t my-model . && docker run -p {PORT}:{PORT} my-model
FROM python:{major_minor}-slim
ARG MLSMITH="mlsmith[serve]=={version}"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv
COPY requirements.txt /srv/package/requirements.txt
RUN pip install -r /srv/package/requirements.txt "$MLSMITH"
COPY . /srv/package
RUN useradd --system --no-create-home mlsmith
USER mlsmith
EXPOSE {PORT}
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \\
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{PORT}/v2/health/ready')"
CMD ["mlsmith", "serve", "/srv/package", "--host", "0.0.0.0", "--port", "{PORT}"]
"""


def write_dockerfile(package_dir: Path, version: str) -> Path:
    """``Dockerfile`` (and ``.dockerignore``) in ``package_dir``; a RunError when it holds no
    package."""
    if not (package_dir / "MLmodel").is_file() or not (package_dir / "requirements.txt").is_file():
        raise RunError(
            f"{package_dir}: no package to containerise (no MLmodel or requirements.txt); write "
            "one with `mlsmith export RUN_DIR` first"
        )
    write_text(package_dir / ".dockerignore", "Dockerfile\n.dockerignore\n")
    write_text(package_dir / DOCKERFILE, dockerfile_text(version))
    return package_dir / DOCKERFILE
