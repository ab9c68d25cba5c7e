"""``mlsmith export --dockerfile``: a Dockerfile in the package folder that serves it; its
command is run here as the container would run it, and ``docker build`` when a daemon is up."""

from __future__ import annotations

import json
import platform
import shlex
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import config_dict, make_table
from tests.serving.conftest import start_server

import mlsmith


def _docker_daemon() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> mlsmith.Run:
    root = tmp_path_factory.mktemp("docker")
    make_table("binary", rows=200).to_csv(root / "data.csv", index=False)
    config = config_dict(root / "data.csv", root / "runs", export={"package": True})
    return mlsmith.train(config, progress=False)


def test_export_writes_a_dockerfile_that_serves_the_package(
    packaged: mlsmith.Run, cli: Any
) -> None:
    result = cli("export", packaged.path, "--dockerfile")
    assert result.code == 0, result.stderr
    dockerfile = packaged.path / "package" / "Dockerfile"
    assert f"Dockerfile: {dockerfile}" in result.stderr
    text = dockerfile.read_text()
    python = ".".join(platform.python_version_tuple()[:2])
    assert f"FROM python:{python}-slim" in text
    assert f'ARG MLSMITH="mlsmith[serve]=={mlsmith.__version__}"' in text
    assert "pip install -r /srv/package/requirements.txt" in text
    assert "USER mlsmith" in text and "HEALTHCHECK" in text
    assert (packaged.path / "package" / ".dockerignore").is_file()
    # The container's command, run here on the same folder layout: it serves and answers.
    command = json.loads(text.strip().splitlines()[-1].removeprefix("CMD "))
    assert command[:3] == ["mlsmith", "serve", "/srv/package"]
    server = start_server([str(packaged.path / "package"), "--host", "127.0.0.1"])
    try:
        with urllib.request.urlopen(f"{server.url}/v2/health/ready", timeout=30) as response:
            assert json.loads(response.read()) == {"ready": True}
    finally:
        assert server.stop() == 0


def test_a_dockerfile_needs_a_package(tmp_path: Path, cli: Any) -> None:
    from mlsmith.errors import RunError
    from mlsmith.packaging.docker import write_dockerfile

    with pytest.raises(RunError, match="no package to containerise"):
        write_dockerfile(tmp_path, "0.1.0")


@pytest.mark.skipif(not _docker_daemon(), reason="no Docker daemon here: the build is not run")
def test_docker_builds_the_image(packaged: mlsmith.Run) -> None:
    package = packaged.path / "package"
    if not (package / "Dockerfile").is_file():
        mlsmith.export(packaged, dockerfile=True)
    build = subprocess.run(
        shlex.split(f"docker build -q -t mlsmith-test-package {package}"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, build.stderr[-3000:]
