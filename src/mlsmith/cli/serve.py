"""``mlsmith serve MODEL [MODEL ...] [--host H] [--port P] [--workers N] [--config serve.yaml]``."""

from __future__ import annotations

from pathlib import Path

import typer


def command(
    models: list[str] = typer.Argument(
        None,
        metavar="MODEL...",
        help="Run directory, package directory or models:/NAME@ALIAS; NAME=MODEL sets the served "
        "name (default: the registered name, else the run's experiment).",
        show_default=False,
    ),
    config: Path = typer.Option(
        None, "--config", "-c", help="serve.yaml: models, A/B routes, shadow, batching, log."
    ),
    host: str = typer.Option(
        None, "--host", help="Address to bind (default 127.0.0.1).", show_default=False
    ),
    port: int = typer.Option(
        None, "--port", "-p", help="Port (default 8080; 0: any free one).", show_default=False
    ),
    workers: int = typer.Option(
        None, "--workers", min=1, help="Server processes (default 1).", show_default=False
    ),
    tracking_uri: str = typer.Option(
        None, "--tracking-uri", help="MLflow store of models:/ references.", show_default=False
    ),
    watch: float = typer.Option(
        None,
        "--watch",
        min=0.1,
        metavar="SECONDS",
        help="Check models:/NAME@ALIAS every SECONDS and swap in a moved alias's version.",
        show_default=False,
    ),
    log_dir: Path = typer.Option(
        None, "--log-dir", help="Append the prediction log (Parquet) here.", show_default=False
    ),
    batching: bool = typer.Option(
        None,
        "--batching/--no-batching",
        help="Adaptive batching (default on).",
        show_default=False,
    ),
    settings: list[str] = typer.Option(
        None,
        "--set",
        metavar="KEY=VALUE",
        help="Any serve.yaml key, e.g. --set batching.max_latency_ms=2 (repeatable).",
    ),
) -> None:
    """Serve models over HTTP: Open Inference Protocol (KServe v2), plus POST .../predict."""
    from mlsmith.api import serve

    serve(
        models or [],
        config=config,
        host=host,
        port=port,
        workers=workers,
        tracking_uri=tracking_uri,
        watch=watch,
        log_dir=log_dir,
        batching=batching,
        overrides=settings or [],
    )
