"""Running the application under uvicorn: one process or several sharing one port.

SIGTERM (and Ctrl-C) drain: the port stops accepting, in-flight requests finish (for at most
``drain_seconds``), the prediction log is flushed, and the process exits 0; a second Ctrl-C
stops at once. The line ``mlsmith serve: listening on http://HOST:PORT`` on stderr says the
server is ready (with ``--port 0``, it names the port the system picked).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mlsmith.config.serve import ServeConfig

if TYPE_CHECKING:
    import socket

    from fastapi import FastAPI

log = logging.getLogger(__name__)

CONFIG_ENV = "MLSMITH_SERVE_CONFIG"
READY_LINE = "mlsmith serve: listening on"


def require_serve_extra() -> None:
    """A clear message naming the install when the ``[serve]`` extra is missing."""
    import importlib.util

    from mlsmith.errors import MissingExtraError

    for module, package in (
        ("fastapi", "fastapi"),
        ("uvicorn", "uvicorn"),
        ("prometheus_client", "prometheus-client"),
        ("orjson", "orjson"),
    ):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # blocked or half-installed
            found = False
        if not found:
            raise MissingExtraError(package, "serve", "mlsmith serve")


def serve(config: ServeConfig) -> None:
    """Serve ``config`` until SIGTERM or Ctrl-C; returns after the drain."""
    require_serve_extra()
    from mlsmith.serving.app import create_app

    if config.workers == 1:
        # Models load before the port opens: a bad reference is an error, not a 5xx later.
        app = create_app(config)
        server = _Server(_uvicorn_config(app, config), config)
        server.run()
        return
    # Several processes: each loads the models itself (uvicorn's supervisor forks them).
    create_app(config)  # fail here, once, rather than in N workers
    os.environ[CONFIG_ENV] = config.model_dump_json()
    uv_config = _uvicorn_config("mlsmith.serving.server:app_from_environment", config)
    uv_config.factory = True
    sock = uv_config.bind_socket()
    # uvicorn binds with proto 0, so asyncio does not set TCP_NODELAY on the accepted sockets
    # (it only does for IPPROTO_TCP ones): Nagle then holds the body uvicorn writes after the
    # headers until the client's delayed ACK, 40 ms a request. Accepted sockets inherit it.
    import socket as socket_module

    if sock.family in (socket_module.AF_INET, socket_module.AF_INET6):
        sock.setsockopt(socket_module.IPPROTO_TCP, socket_module.TCP_NODELAY, 1)
    _announce(config.host, sock.getsockname()[1], config, workers=config.workers)
    import inspect

    from uvicorn.supervisors import Multiprocess

    if "target" in inspect.signature(Multiprocess.__init__).parameters:  # uvicorn < 0.36
        supervisor = Multiprocess(
            uv_config, target=_Server(uv_config, config, quiet=True).run, sockets=[sock]
        )  # type: ignore[call-arg]
    else:
        supervisor = Multiprocess(uv_config, sockets=[sock])
    with _graceful_exit():
        supervisor.run()


def app_from_environment() -> FastAPI:
    """The application of a worker process (``--workers N``), from the parent's config."""
    from mlsmith.serving.app import create_app

    return create_app(ServeConfig.model_validate(json.loads(os.environ[CONFIG_ENV])))


def _uvicorn_config(app: Any, config: ServeConfig) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        workers=config.workers,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(config.drain_seconds) or None,
        # Keep-alive connections of load generators and proxies: 5 s, uvicorn's default.
        timeout_keep_alive=5,
        lifespan="on",
    )


def _announce(host: str, port: int, config: ServeConfig, workers: int = 1) -> None:
    names = ", ".join([*config.models, *config.routes])
    more = f", {workers} workers" if workers > 1 else ""
    print(f"{READY_LINE} http://{host}:{port} (models: {names}{more})", file=sys.stderr, flush=True)


class _Server:
    """uvicorn's Server, announcing its port and exiting 0 after a drain."""

    def __new__(cls, uv_config: Any, config: ServeConfig, quiet: bool = False) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                await super().startup(sockets=sockets)
                if self.should_exit or quiet:
                    return
                port = config.port
                for server in self.servers:
                    for sock in server.sockets:
                        port = sock.getsockname()[1]
                _announce(config.host, port, config)

            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                with super().capture_signals():
                    yield
                    if self._captured_signals:
                        log.info("drained after signal %s; exiting", self._captured_signals[-1])
                    # A drain is a clean stop: exit 0, not the signal's status.
                    self._captured_signals.clear()

        return Server(uv_config)


@contextlib.contextmanager
def _graceful_exit() -> Iterator[None]:
    """The supervisor of several workers re-raises nothing; a Ctrl-C after the drain is quiet."""
    with contextlib.suppress(KeyboardInterrupt):
        yield
