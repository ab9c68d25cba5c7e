"""The serving configuration (``serve.yaml``): what ``mlsmith serve`` serves and how.

Models are named references (a run directory, a package directory or ``models:/NAME@ALIAS``);
a route splits one served name between weighted variants, optionally sticky by a request key,
with an optional shadow that sees every request and answers nobody. Defaults serve one model on
127.0.0.1 with adaptive batching on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from mlsmith.config.base import Section


class BatchingConfig(Section):
    """Adaptive batching: concurrent requests to one model merged into one inference call."""

    enabled: bool = Field(True, description="merge concurrent requests into one call")
    max_batch_size: int = Field(
        64, ge=1, description="rows per merged call at most (a larger request runs alone)"
    )
    max_latency_ms: float = Field(
        1.0,
        ge=0,
        description="how long the first request of a batch waits for company, at most",
    )


class VariantConfig(Section):
    """One model behind a route."""

    name: str = Field(description="the variant's name, reported with each answer")
    model: str = Field(description="run directory, package directory or models:/NAME@ALIAS")
    weight: float = Field(1.0, ge=0, description="share of the traffic (relative)")


class ShadowConfig(Section):
    """A variant that gets a copy of every request after the answer is sent."""

    name: str = Field("shadow", description="the shadow's name in logs and metrics")
    model: str = Field(description="run directory, package directory or models:/NAME@ALIAS")


class StickyConfig(Section):
    """Where the key that keeps one client on one variant is read from (first found wins)."""

    header: str | None = Field(None, description="request header holding the key")
    input: str | None = Field(None, description="input (column) holding the key")

    @model_validator(mode="after")
    def _one_source(self) -> StickyConfig:
        if self.header is None and self.input is None:
            raise ValueError("sticky needs a header or an input to read the key from")
        return self


class RouteConfig(Section):
    """A served name split between variants (A/B), with an optional shadow."""

    variants: list[VariantConfig] = Field(min_length=1)
    shadow: ShadowConfig | None = None
    sticky: StickyConfig | None = None

    @field_validator("variants")
    @classmethod
    def _distinct_and_weighted(cls, variants: list[VariantConfig]) -> list[VariantConfig]:
        names = [v.name for v in variants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"variant names must be distinct; repeated: {', '.join(duplicates)}")
        if sum(v.weight for v in variants) <= 0:
            raise ValueError("at least one variant needs a positive weight")
        return variants


class PredictionLogConfig(Section):
    """The prediction log: Parquet files appended in batches, off the request path."""

    directory: Path | None = Field(None, description="where to write it (none: no log)")
    sample_rate: float = Field(1.0, ge=0, le=1, description="share of requests logged")
    flush_rows: int = Field(1000, ge=1, description="rows buffered before a file is written")
    flush_seconds: float = Field(
        5.0, gt=0, description="seconds before a partial buffer is written"
    )


class DriftConfig(Section):
    """Live drift against the package's training statistics, exported as Prometheus gauges."""

    enabled: bool = True
    window: int = Field(1000, ge=10, description="the most recent rows PSI is computed over")


class ServeConfig(Section):
    """Everything ``mlsmith serve`` reads from ``--config`` (command-line options override)."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="server processes sharing the port")
    models: dict[str, str] = Field(
        default_factory=dict, description="served name -> run dir, package or models:/NAME@ALIAS"
    )
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    tracking_uri: str | None = Field(None, description="for models:/ references")
    watch: float | None = Field(
        None, gt=0, description="seconds between checks of models:/NAME@ALIAS for a moved alias"
    )
    max_body_mb: float = Field(16.0, gt=0, description="larger request bodies get 413")
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    log: PredictionLogConfig = Field(default_factory=PredictionLogConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    drain_seconds: float = Field(
        30.0, ge=0, description="on SIGTERM, how long in-flight requests may take to finish"
    )

    @model_validator(mode="after")
    def _names_unique(self) -> ServeConfig:
        both = sorted(set(self.models) & set(self.routes))
        if both:
            raise ValueError(f"served names given both as a model and a route: {', '.join(both)}")
        return self


def load_serve_config(
    source: str | Path | dict[str, Any] | ServeConfig | None = None,
    overrides: list[str] | None = None,
    **options: Any,
) -> ServeConfig:
    """A validated :class:`ServeConfig` from a YAML file (or dict), ``key=value`` overrides and
    keyword options (None means "not given"); model references in a file are read relative to
    the file. Raises ConfigError naming the file and key."""
    from pydantic import ValidationError

    from mlsmith.config.loading import apply_overrides, format_validation_error, read_yaml_mapping
    from mlsmith.errors import ConfigError

    origin = "serve config"
    if source is None:
        raw: dict[str, Any] = {}
    elif isinstance(source, ServeConfig):
        raw = source.model_dump(mode="json", exclude_unset=True)
    elif isinstance(source, dict):
        raw = dict(source)
    else:
        path = Path(source)
        raw = read_yaml_mapping(path)
        origin = str(path)
        _relative_models(raw, path.parent)
    overridden = apply_overrides(raw, list(overrides or []))
    for key, value in options.items():
        if value is None:
            continue
        if key == "log_dir":
            raw.setdefault("log", {})["directory"] = str(value)
        elif key == "batching":
            raw.setdefault("batching", {})["enabled"] = bool(value)
        elif key == "models":
            raw.setdefault("models", {}).update(value)
        else:
            raw[key] = value
        overridden.add((key,))
    try:
        return ServeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin, overridden)) from None


def _relative_models(raw: dict[str, Any], base: Path) -> None:
    """Model paths in a serve.yaml are relative to the file, as a reader expects."""

    def resolved(reference: Any) -> Any:
        if not isinstance(reference, str) or reference.startswith(("models:/", "runs:/")):
            return reference
        path = Path(reference)
        return str(path if path.is_absolute() else (base / path).resolve())

    models = raw.get("models")
    if isinstance(models, dict):
        raw["models"] = {k: resolved(v) for k, v in models.items()}
    routes = raw.get("routes")
    if isinstance(routes, dict):
        for route in routes.values():
            if not isinstance(route, dict):
                continue
            for entry in [*(route.get("variants") or []), route.get("shadow")]:
                if isinstance(entry, dict) and "model" in entry:
                    entry["model"] = resolved(entry["model"])
