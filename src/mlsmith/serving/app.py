"""The HTTP application: Open Inference Protocol (KServe v2) endpoints plus a plain JSON one.

``create_app(config)`` loads every model first (a bad reference fails before the port opens),
then answers:

- ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/{name}[/versions/{v}]``
  and ``.../ready``: health and metadata.
- ``POST /v2/models/{name}[/versions/{v}]/infer``: v2 inference, JSON or binary tensors.
- ``POST /v2/models/{name}/predict``: ``{"rows": [{column: value}, ...]}`` for people.
- ``POST /v2/models/{name}/feedback`` and ``GET /v2/models/{name}/ab``: labels in, live
  per-variant metrics out.
- ``GET /metrics``: Prometheus.

A request is routed to a variant (A/B, sticky by a key when configured), joins that variant's
batcher, and is answered; a shadow variant then gets a copy after the response has gone. Client
mistakes are 4xx with ``{"error": "..."}``; a 5xx means a bug.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from mlsmith.config.serve import RouteConfig, ServeConfig, VariantConfig
from mlsmith.errors import MlsmithError
from mlsmith.serving.batching import Batcher, Predict
from mlsmith.serving.metrics import ServerMetrics
from mlsmith.serving.models import (
    Answer,
    InputSpec,
    Loaded,
    ModelSlot,
    Rows,
    output_specs,
    output_tensors,
    rows_from_json,
    rows_from_tensors,
)
from mlsmith.serving.protocol import (
    HEADER_LENGTH,
    ProtocolError,
    check_requested_outputs,
    check_text,
    dump_json,
    encode_response,
    load_json,
    parse_request,
)

if TYPE_CHECKING:
    from mlsmith.runtime.drift import DriftWindow
    from mlsmith.runtime.package import Package
    from mlsmith.serving.feedback import FeedbackStore
    from mlsmith.serving.predlog import PredictionLog
    from mlsmith.serving.routing import Router
    from mlsmith.serving.standalone import StandaloneEndpoint

log = logging.getLogger(__name__)

VARIANT_HEADER = "X-Mlsmith-Variant"
REQUEST_ID_HEADER = "X-Request-Id"
DEFAULT_VARIANT = "default"


@dataclass
class Variant:
    """One model behind a served name, with its own batcher and drift window."""

    name: str
    slot: ModelSlot
    batcher: Batcher
    drift: DriftWindow | None = None
    # The call the batcher runs for (version, drift window), kept while both stay: _predictor.
    predictor: tuple[Loaded, DriftWindow | None, Predict] | None = None


@dataclass
class Endpoint:
    """A served name: its variants, how requests are split between them, and its shadow."""

    name: str
    variants: dict[str, Variant]
    router: Router
    shadow: Variant | None
    # None for a ranking model: label feedback scores classifiers and regressors.
    feedback: FeedbackStore | None
    sticky_input: str | None = None

    @property
    def primary(self) -> Variant:
        """The variant whose signature and metadata the served name advertises."""
        return next(iter(self.variants.values()))

    @property
    def inputs(self) -> list[InputSpec]:
        return self.primary.slot.signature

    def pinned(self, version: str | None) -> Variant | None:
        """The variant serving ``version``; None when none does."""
        for variant in self.variants.values():
            if version is None or variant.slot.current.version == version:
                return variant
        return None


@dataclass
class ServerState:
    config: ServeConfig
    endpoints: dict[str, Endpoint]
    metrics: ServerMetrics
    predlog: PredictionLog | None
    # Served names outside A/B routes (forecasting and scene packages): serving.standalone.
    standalone: dict[str, StandaloneEndpoint] = field(default_factory=dict)
    draining: bool = False
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


def load_endpoints(
    config: ServeConfig, metrics: ServerMetrics
) -> tuple[dict[str, Endpoint], dict[str, StandaloneEndpoint]]:
    """Load every model the config names, each once: the row models, and the forecasting and
    scene packages (served on their own, outside A/B routes)."""
    from mlsmith.serving.standalone import load_standalone

    routes: dict[str, RouteConfig] = dict(config.routes)
    standalone = {}
    for name, reference in config.models.items():
        loaded = load_standalone(name, reference, config.tracking_uri)
        if loaded is not None:
            standalone[name] = loaded
            continue
        routes[name] = RouteConfig(variants=[VariantConfig(name=DEFAULT_VARIANT, model=reference)])
    if not routes and not standalone:
        raise MlsmithError(
            "nothing to serve: name at least one model (a run, a package or models:/NAME@ALIAS)"
        )
    endpoints = {}
    for name, route in routes.items():
        endpoints[name] = _endpoint(name, route, config, metrics)
    return endpoints, standalone


def _endpoint(
    name: str, route: RouteConfig, config: ServeConfig, metrics: ServerMetrics
) -> Endpoint:
    from mlsmith.serving.feedback import FeedbackStore
    from mlsmith.serving.routing import Router

    variants = {v.name: _variant(name, v.name, v.model, config, metrics) for v in route.variants}
    shadow = (
        _variant(name, route.shadow.name, route.shadow.model, config, metrics)
        if route.shadow
        else None
    )
    first = next(iter(variants.values()))
    expected = [s.name for s in first.slot.signature]
    for variant in [*variants.values(), *([shadow] if shadow else [])]:
        got = [s.name for s in variant.slot.signature]
        if sorted(got) != sorted(expected):
            raise MlsmithError(
                f"served name '{name}': variant '{variant.name}' reads {', '.join(got)} but "
                f"'{first.name}' reads {', '.join(expected)}; the variants of one name must read "
                "the same inputs"
            )
    package = first.slot.current.package
    return Endpoint(
        name=name,
        variants=variants,
        router=Router(route),
        shadow=shadow,
        # Scored with the first variant's decision threshold (a binary package may carry one).
        feedback=None
        if package.decoder.kind == "ranking"
        else FeedbackStore(
            package.decoder.kind, package.classes or None, threshold=package.decoder.threshold
        ),
        sticky_input=route.sticky.input if route.sticky else None,
    )


def _variant(
    name: str, variant: str, reference: str, config: ServeConfig, metrics: ServerMetrics
) -> Variant:
    slot = ModelSlot(name, reference, config.tracking_uri)
    batching = config.batching

    def observe(rows: int, requests: int) -> None:
        metrics.batch_rows.labels(name).observe(rows)
        metrics.batch_requests.labels(name).observe(requests)

    batcher = Batcher(
        max_batch_size=batching.max_batch_size,
        max_latency_ms=batching.max_latency_ms,
        enabled=batching.enabled,
        observe=observe,
        name=f"{name}-{variant}",
        merge=Rows.merge,
        part=Answer.part,
    )
    metrics.version.labels(name, variant, slot.current.version).set(1)
    return Variant(variant, slot, batcher, _drift_window(slot.current, config))


def _drift_window(loaded: Loaded, config: ServeConfig) -> DriftWindow | None:
    if not config.drift.enabled:
        return None
    reference = getattr(loaded.package, "reference", None)
    if reference is None:
        return None
    from mlsmith.runtime.drift import DriftWindow

    return DriftWindow(reference, config.drift.window)


def create_app(config: ServeConfig) -> FastAPI:
    """The application serving ``config``'s models (loaded now)."""

    metrics = ServerMetrics()
    endpoints, standalone = load_endpoints(config, metrics)
    predlog = None
    if config.log.directory is not None:
        from mlsmith.serving.predlog import PredictionLog

        predlog = PredictionLog(config.log)
    state = ServerState(config, endpoints, metrics, predlog, standalone)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if config.watch:
            _spawn(state, _watch(state, config.watch))
        try:
            yield
        finally:
            state.draining = True
            for task in list(state.tasks):
                task.cancel()
            for endpoint in endpoints.values():
                for variant in _all_variants(endpoint):
                    await variant.batcher.close()
            if predlog is not None:
                await asyncio.get_running_loop().run_in_executor(None, predlog.close)

    from mlsmith import __version__

    app = FastAPI(
        title="mlsmith serve",
        version=__version__,
        lifespan=lifespan,
        description="Open Inference Protocol (KServe v2) REST, plus a plain JSON endpoint.",
    )
    app.state.mlsmith = state
    _errors(app)
    _routes(app, state)
    return app


def _all_variants(endpoint: Endpoint) -> list[Variant]:
    return [*endpoint.variants.values(), *([endpoint.shadow] if endpoint.shadow else [])]


def _spawn(state: ServerState, coroutine: Any) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    state.tasks.add(task)
    task.add_done_callback(state.tasks.discard)


async def _watch(state: ServerState, seconds: float) -> None:
    """Follow registry aliases: load a moved alias's version beside the current one, swap."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(seconds)
        for endpoint in state.endpoints.values():
            for variant in _all_variants(endpoint):
                if not variant.slot.follows_alias:
                    continue
                before = variant.slot.current.version
                try:
                    swapped = await loop.run_in_executor(None, variant.slot.refresh)
                except Exception as exc:  # the registry is down: keep serving what we have
                    log.warning(
                        "%s: could not check %s (%s)", endpoint.name, variant.slot.reference, exc
                    )
                    continue
                if swapped:
                    gauge = state.metrics.version
                    gauge.labels(endpoint.name, variant.name, before).set(0)
                    gauge.labels(endpoint.name, variant.name, variant.slot.current.version).set(1)
                    variant.drift = _drift_window(variant.slot.current, state.config)


# --- errors ------------------------------------------------------------------------------------


def _error(message: str, status: int, headers: Mapping[str, str] | None = None) -> Response:
    # ASCII JSON: a message quoting the client's text stays renderable whatever that text holds
    # (JSONResponse encodes UTF-8 and fails on a lone surrogate, turning a 400 into a 500).
    body = json.dumps({"error": message}, separators=(",", ":")).encode()
    return Response(body, status, dict(headers or {}), media_type="application/json")


def _request_id_headers(request_id: str) -> dict[str, str]:
    """The request id echoed as a header when it can be one: an id is any JSON string, but a
    header value is visible ASCII (a newline or NUL makes the server drop the connection, a
    character past Latin-1 fails to encode). Every id is in the response body anyway."""
    if request_id.isascii() and request_id.isprintable():
        return {REQUEST_ID_HEADER: request_id}
    return {}


def _errors(app: FastAPI) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(ProtocolError)
    async def protocol_error(request: Request, exc: ProtocolError) -> Response:
        return _error(exc.message, exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        return _error(message, exc.status_code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(f"{where}: {first.get('msg', 'invalid request')}", 400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error answering %s %s", request.method, request.url.path)
        return _error(f"internal error: {type(exc).__name__}: {exc}", 500)


# --- routes ------------------------------------------------------------------------------------

_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "shape", "datatype"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "shape": {"type": "array", "items": {"type": "integer"}},
                                    "datatype": {"type": "string"},
                                    "parameters": {"type": "object"},
                                    "data": {},
                                },
                            },
                        },
                        "outputs": {"type": "array", "items": {"type": "object"}},
                    },
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}
_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["rows"],
                    "properties": {"rows": {"type": "array", "items": {"type": "object"}}},
                }
            }
        },
    },
}
_FEEDBACK_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["request_ids", "labels"],
                    "properties": {
                        "request_ids": {"type": "array", "items": {"type": "string"}},
                        "labels": {"type": "array"},
                    },
                }
            }
        },
    },
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": 'Bad input: {"error": "..."} names the input and what was expected'},
    404: {"description": "Unknown model or version"},
    413: {"description": "Body over the size limit"},
}


def _routes(app: FastAPI, state: ServerState) -> None:

    from mlsmith import __version__

    @app.get("/v2/health/live", tags=["health"])
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["health"], responses={503: {"description": "Draining"}})
    async def ready() -> Response:
        if state.draining:
            return JSONResponse({"ready": False}, status_code=503)
        return JSONResponse({"ready": True})

    @app.get("/v2", tags=["metadata"])
    async def server_metadata() -> dict[str, Any]:
        return {"name": "mlsmith", "version": __version__, "extensions": ["binary_tensor_data"]}

    def metadata(endpoint: Endpoint, variant: Variant | None) -> dict[str, Any]:
        shown = variant or endpoint.primary
        package = shown.slot.current.package
        versions = sorted({v.slot.current.version for v in endpoint.variants.values()})
        return {
            "name": endpoint.name,
            "versions": versions if variant is None else [shown.slot.current.version],
            "platform": f"mlsmith_{package.info.get('engine', 'onnx')}",
            "inputs": [
                {"name": s.name, "datatype": s.datatype, "shape": [-1]}
                for s in shown.slot.signature
            ],
            "outputs": output_specs(package),
            "parameters": {
                "task": package.decoder.kind,
                "classes": [c.item() if isinstance(c, np.generic) else c for c in package.classes],
                "family": package.family,
                "variants": {
                    v.name: {"version": v.slot.current.version, "source": v.slot.reference}
                    for v in endpoint.variants.values()
                },
                **({"shadow": endpoint.shadow.name} if endpoint.shadow else {}),
            },
        }

    @app.get("/v2/models/{name}", tags=["metadata"], responses=_ERRORS)
    async def model_metadata(name: str) -> dict[str, Any]:
        if name in state.standalone:
            return state.standalone[name].metadata()
        return metadata(endpoint_for(state, name), None)

    @app.get("/v2/models/{name}/versions/{version}", tags=["metadata"], responses=_ERRORS)
    async def version_metadata(name: str, version: str) -> dict[str, Any]:
        if name in state.standalone:
            return standalone_version(state, name, version).metadata()
        endpoint = endpoint_for(state, name)
        return metadata(endpoint, variant_for(endpoint, version))

    def readiness(name: str, version: str | None) -> Response:
        if name in state.standalone:
            if version is not None:
                standalone_version(state, name, version)
        else:
            variant_for(endpoint_for(state, name), version)
        ok = not state.draining
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2/models/{name}/ready", tags=["health"], responses=_ERRORS)
    async def model_ready(name: str) -> Response:
        return readiness(name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["health"], responses=_ERRORS)
    async def version_ready(name: str, version: str) -> Response:
        return readiness(name, version)

    @app.post(
        "/v2/models/{name}/infer", tags=["inference"], openapi_extra=_INFER_BODY, responses=_ERRORS
    )
    async def infer(name: str, request: Request) -> Response:
        return await _infer(state, request, name, None)

    @app.post(
        "/v2/models/{name}/versions/{version}/infer",
        tags=["inference"],
        openapi_extra=_INFER_BODY,
        responses=_ERRORS,
    )
    async def infer_version(name: str, version: str, request: Request) -> Response:
        return await _infer(state, request, name, version)

    @app.post(
        "/v2/models/{name}/predict",
        tags=["inference"],
        openapi_extra=_PREDICT_BODY,
        responses=_ERRORS,
    )
    async def predict(name: str, request: Request) -> Response:
        return await _predict(state, request, name)

    _plain_inference_routes(app, state)

    @app.post(
        "/v2/models/{name}/feedback", tags=["a/b"], openapi_extra=_FEEDBACK_BODY, responses=_ERRORS
    )
    async def feedback(name: str, request: Request) -> Response:
        if name in state.standalone:
            raise ProtocolError(state.standalone[name].feedback_refusal)
        endpoint = endpoint_for(state, name)
        body = _json_object(await _read_body(request, state.config))
        ids, labels = body.get("request_ids"), body.get("labels")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ProtocolError("'request_ids' must be a list of strings")
        for i, request_id in enumerate(ids):
            check_text(request_id, f"request_ids[{i}]")
        if not isinstance(labels, list) or len(labels) != len(ids):
            raise ProtocolError(
                "'labels' must be a list with one label per request id (a list of labels for a "
                "request of several rows)"
            )
        if endpoint.feedback is None:
            raise ProtocolError(
                f"'{name}' is a ranking model: feedback labels score classifiers and "
                "regressors; score a ranking's labelled queries with `mlsmith evaluate`"
            )
        try:
            result = endpoint.feedback.add_labels(ids, labels)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        return JSONResponse(_jsonable(result))

    @app.get("/v2/models/{name}/ab", tags=["a/b"], responses=_ERRORS)
    async def ab(name: str) -> Response:
        if name in state.standalone:
            return JSONResponse(
                {"model": name, "weights": {DEFAULT_VARIANT: 1.0}, "feedback": None}
            )
        endpoint = endpoint_for(state, name)
        store = endpoint.feedback
        report = (
            await asyncio.get_running_loop().run_in_executor(None, store.report)
            if store is not None
            else {"feedback": None}  # a ranking model: no label feedback
        )
        weights = endpoint.router.weights()
        return JSONResponse(_jsonable({"model": name, "weights": weights, **report}))

    @app.get("/metrics", tags=["metrics"])
    async def prometheus() -> Response:
        _update_drift_gauges(state)
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)


def _plain_inference_routes(app: FastAPI, state: ServerState) -> None:
    """Serve the three inference paths through plain Starlette routes, matched first.

    These endpoints read the raw body and build their own responses, so FastAPI's request
    handling around them (parameter solving, the response machinery) buys nothing and costs a
    fifth of a one-row request on a small model. The FastAPI routes stay for the OpenAPI
    document; errors still go through the app's exception handlers.
    """
    from starlette.routing import Route

    async def infer(request: Request) -> Response:
        return await _infer(state, request, request.path_params["name"], None)

    async def infer_version(request: Request) -> Response:
        params = request.path_params
        return await _infer(state, request, params["name"], params["version"])

    async def predict(request: Request) -> Response:
        return await _predict(state, request, request.path_params["name"])

    plain = [
        Route("/v2/models/{name}/infer", infer, methods=["POST"], include_in_schema=False),
        Route(
            "/v2/models/{name}/versions/{version}/infer",
            infer_version,
            methods=["POST"],
            include_in_schema=False,
        ),
        Route("/v2/models/{name}/predict", predict, methods=["POST"], include_in_schema=False),
    ]
    app.router.routes[:0] = plain


def endpoint_for(state: ServerState, name: str) -> Endpoint:
    """The served name's endpoint; 404 naming the served ones (and the closest) when unknown."""
    endpoint = state.endpoints.get(name)
    if endpoint is None:
        from mlsmith.errors import did_you_mean

        known = [*state.endpoints, *state.standalone]
        raise ProtocolError(
            f"no model named '{name}'{did_you_mean(name, known)}; served: {', '.join(known)}",
            404,
        )
    return endpoint


def variant_for(endpoint: Endpoint, version: str | None) -> Variant | None:
    """The variant serving ``version`` (None: no version asked); 404 when none serves it."""
    if version is None:
        return None
    variant = endpoint.pinned(version)
    if variant is None:
        served = sorted({v.slot.current.version for v in endpoint.variants.values()})
        raise ProtocolError(
            f"model '{endpoint.name}' has no version '{version}' being served (serving: "
            f"{', '.join(served)})",
            404,
        )
    return variant


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return _jsonable(asdict(value))
    return value


def _update_drift_gauges(state: ServerState) -> None:
    for endpoint in state.endpoints.values():
        for variant in endpoint.variants.values():
            if variant.drift is None:
                continue
            for feature, value in variant.drift.psi_by_feature().items():
                if math.isfinite(value):
                    state.metrics.feature_psi.labels(endpoint.name, feature).set(value)
            prediction = variant.drift.prediction_psi()
            if prediction is not None and math.isfinite(prediction):
                state.metrics.prediction_psi.labels(endpoint.name).set(prediction)
            break  # the primary variant's window speaks for the served name


# --- inference ---------------------------------------------------------------------------------


async def _read_body(request: Request, config: ServeConfig) -> bytes:
    """The whole body, refused with 413 as soon as it passes the limit."""
    limit = int(config.max_body_mb * 2**20)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProtocolError(
            f"request body of {int(declared):,} bytes is over the limit of {limit:,} bytes "
            "(serve option max_body_mb)",
            413,
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(
                f"request body is over the limit of {limit:,} bytes (serve option max_body_mb)",
                413,
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _json_object(body: bytes) -> dict[str, Any]:
    value = load_json(body)  # 400 for bad JSON, too deep nesting included
    if not isinstance(value, dict):
        raise ProtocolError("the request body must be a JSON object")
    return value


def _choose(
    endpoint: Endpoint,
    request: Request,
    columns: Mapping[str, Any] | None,
    pinned: Variant | None,
) -> Variant:
    """The variant answering: the one serving a pinned version, else the router's choice
    (sticky by the key in ``columns``' first row or a header, when the route says so)."""
    if pinned is not None:
        return pinned
    key = endpoint.router.sticky_key(request.headers, columns)
    return endpoint.variants[endpoint.router.choose(key)]


def _predictor(state: ServerState, endpoint: Endpoint, variant: Variant, loaded: Loaded) -> Predict:
    """``loaded``'s predict, then (for a live variant) the prediction counters and the drift
    window on the same rows.

    The batcher runs it in its thread once per inference call, on the merged rows of every
    request in the call: binning 30 features costs 1-2 ms whether for one row or 64, and
    counting the labels a quarter of a millisecond, too much to pay per request on the event
    loop. The callable is kept while the version and the window stay, since the batcher merges
    only requests that share it.
    """
    live = variant is not endpoint.shadow  # a shadow's answers are neither counted nor binned
    drift = variant.drift if live else None
    cached = variant.predictor
    if cached is not None and cached[0] is loaded and cached[1] is drift:
        return cached[2]
    package = loaded.package
    classified = bool(package.classes)

    def predict(rows: Rows) -> Answer:
        # Numpy columns in, arrays out: no DataFrame at either end for a tabular package.
        answer = Answer.decode(package, package.raw_columns(rows.columns, rows.n))
        if live:
            try:
                state.metrics.predictions(endpoint.name, variant.name, answer.labels, classified)
                if drift is not None:
                    drift.update(rows.columns, answer.labels)
            except Exception:  # the gauges must never cost a client its answer
                log.exception("%s: could not count predictions of %s", endpoint.name, variant.name)
        return answer

    variant.predictor = (loaded, drift, predict)
    return predict


async def _run_variant(
    state: ServerState, endpoint: Endpoint, variant: Variant, rows: Rows, arrival: Any
) -> tuple[Loaded, Answer]:
    loaded = variant.slot.current  # this request's version, whatever happens to the alias
    predict = _predictor(state, endpoint, variant, loaded)
    try:
        answer: Answer = await arrival.predict(rows, predict)
    except MlsmithError as exc:  # the package refused these rows (a DataError)
        raise ProtocolError(str(exc)) from None
    return loaded, answer


async def _infer(
    state: ServerState,
    request: Request,
    name: str,
    version: str | None,
) -> Response:

    if name in state.standalone:
        return await _standalone_infer(state, request, standalone_version(state, name, version))
    started = time.perf_counter()
    endpoint = endpoint_for(state, name)
    pinned = variant_for(endpoint, version)
    status, variant_name = 400, "-"
    try:
        body = await _read_body(request, state.config)
        parsed = parse_request(body, request.headers.get(HEADER_LENGTH))
        extra = (endpoint.sticky_input,) if endpoint.sticky_input else ()
        rows = rows_from_tensors(parsed.inputs, endpoint.inputs, extra=extra)
        columns = {t.name: t.data for t in parsed.inputs}
        variant = _choose(endpoint, request, columns, pinned)
        variant_name = variant.name
        request_id = parsed.id or request.headers.get(REQUEST_ID_HEADER) or new_request_id()
        with variant.batcher.arrival() as arrival:
            loaded, answer = await _run_variant(state, endpoint, variant, rows, arrival)
        tensors = output_tensors(loaded.package, answer)
        check_requested_outputs(parsed, [t.name for t in tensors])
        content, headers = encode_response(
            model_name=name,
            model_version=loaded.version,
            request_id=request_id,
            outputs=tensors,
            parameters={"variant": variant.name},
            request=parsed,
        )
        headers |= {VARIANT_HEADER: variant.name, **_request_id_headers(request_id)}
        status = 200
        response = Response(content, headers=headers)
        _after(state, endpoint, variant, loaded, request_id, rows, answer, started, response)
        return response
    except ProtocolError as exc:
        status = exc.status
        raise
    finally:
        state.metrics.requests.labels(name, variant_name, "infer", str(status)).inc()
        state.metrics.latency.labels(name, "infer").observe(time.perf_counter() - started)


async def _predict(state: ServerState, request: Request, name: str) -> Response:
    if name in state.standalone:
        return await _standalone_rows(state, request, state.standalone[name])
    return await _predict_rows(state, request, endpoint_for(state, name))


def standalone_version(state: ServerState, name: str, version: str | None) -> StandaloneEndpoint:
    """The standalone endpoint ``name`` (404 for a version it does not serve)."""
    endpoint = state.standalone[name]
    if version is not None and version != endpoint.version:
        raise ProtocolError(
            f"model '{name}' has no version '{version}' being served (serving: {endpoint.version})",
            404,
        )
    return endpoint


async def _standalone_infer(
    state: ServerState, request: Request, endpoint: StandaloneEndpoint
) -> Response:
    """A v2 inference request to a forecasting or scene package (serving.standalone)."""
    with _counted(state, endpoint.name, "infer") as outcome:
        body = await _read_body(request, state.config)
        parsed = parse_request(body, request.headers.get(HEADER_LENGTH))
        tensors = await endpoint.infer(parsed)
        check_requested_outputs(parsed, [t.name for t in tensors])
        request_id = parsed.id or request.headers.get(REQUEST_ID_HEADER) or new_request_id()
        content, headers = encode_response(
            model_name=endpoint.name,
            model_version=endpoint.version,
            request_id=request_id,
            outputs=tensors,
            parameters={"variant": DEFAULT_VARIANT},
            request=parsed,
        )
        outcome.status = 200
        return Response(content, headers=headers | _request_id_headers(request_id))


async def _standalone_rows(
    state: ServerState, request: Request, endpoint: StandaloneEndpoint
) -> Response:
    """``POST .../predict`` to a forecasting or scene package."""
    with _counted(state, endpoint.name, "predict") as outcome:
        body = _json_object(await _read_body(request, state.config))
        answer = await endpoint.predict_json(body)
        request_id = check_text(
            str(body.get("id") or request.headers.get(REQUEST_ID_HEADER) or new_request_id()),
            "'id'",
        )
        document = {
            "model_name": endpoint.name,
            "model_version": endpoint.version,
            "id": request_id,
            **answer,
        }
        outcome.status = 200
        return Response(
            dump_json(document),
            media_type="application/json",
            headers=_request_id_headers(request_id),
        )


@dataclass
class _Outcome:
    status: int = 400


@contextmanager
def _counted(state: ServerState, name: str, path: str) -> Iterator[_Outcome]:
    """Count a standalone endpoint's request and time it, by the status it ends with."""
    started = time.perf_counter()
    outcome = _Outcome()
    try:
        yield outcome
    except ProtocolError as exc:
        outcome.status = exc.status
        raise
    finally:
        state.metrics.requests.labels(name, DEFAULT_VARIANT, path, str(outcome.status)).inc()
        state.metrics.latency.labels(name, path).observe(time.perf_counter() - started)


async def _predict_rows(state: ServerState, request: Request, endpoint: Endpoint) -> Response:

    started = time.perf_counter()
    status, variant_name = 400, "-"
    try:
        body = _json_object(await _read_body(request, state.config))
        rows: Any = body.get("rows")
        extra = (endpoint.sticky_input,) if endpoint.sticky_input else ()
        parsed_rows = rows_from_json(rows, endpoint.inputs, extra=extra)
        first = {k: [v] for k, v in rows[0].items()}  # rows: checked by rows_from_json
        variant = _choose(endpoint, request, first, None)
        variant_name = variant.name
        request_id = check_text(
            str(body.get("id") or request.headers.get(REQUEST_ID_HEADER) or new_request_id()),
            "'id'",
        )
        with variant.batcher.arrival() as arrival:
            loaded, answer = await _run_variant(state, endpoint, variant, parsed_rows, arrival)
        predictions = _prediction_items(loaded.package, answer)
        status = 200
        document = {
            "model_name": endpoint.name,
            "model_version": loaded.version,
            "id": request_id,
            "variant": variant.name,
            "predictions": predictions,  # plain Python values: tolist() above
        }
        response = Response(
            dump_json(document),
            media_type="application/json",
            headers={VARIANT_HEADER: variant.name, **_request_id_headers(request_id)},
        )
        _after(state, endpoint, variant, loaded, request_id, parsed_rows, answer, started, response)
        return response
    except ProtocolError as exc:
        status = exc.status
        raise
    finally:
        state.metrics.requests.labels(endpoint.name, variant_name, "predict", str(status)).inc()
        state.metrics.latency.labels(endpoint.name, "predict").observe(
            time.perf_counter() - started
        )


def _after(
    state: ServerState,
    endpoint: Endpoint,
    variant: Variant,
    loaded: Loaded,
    request_id: str,
    rows: Rows,
    answer: Answer,
    started: float,
    response: Response,
) -> None:
    """What follows an answer: metrics, drift, feedback bookkeeping, the log, the shadow."""
    from starlette.background import BackgroundTask

    latency_ms = (time.perf_counter() - started) * 1000
    # The prediction counters and the drift window saw these rows in the batcher (_predictor).
    if endpoint.feedback is not None:
        endpoint.feedback.record_array(request_id, variant.name, _scored(answer))
    if state.predlog is not None:
        classes = loaded.package.classes
        state.predlog.append(
            request_id, endpoint.name, variant.name, rows.frame(), answer.frame(classes), latency_ms
        )
    if endpoint.shadow is not None:
        # After the response has gone: the shadow can never change it or delay it.
        response.background = BackgroundTask(_shadow, state, endpoint, request_id, rows)


async def _shadow(state: ServerState, endpoint: Endpoint, request_id: str, rows: Rows) -> None:
    shadow = endpoint.shadow
    assert shadow is not None
    started = time.perf_counter()
    try:
        with shadow.batcher.arrival() as arrival:
            loaded, answer = await _run_variant(state, endpoint, shadow, rows, arrival)
    except Exception as exc:  # a shadow's failure is logged and counted, never seen by clients
        state.metrics.shadow_failures.labels(endpoint.name, shadow.name).inc()
        log.warning(
            "%s: shadow %s failed on request %s: %s", endpoint.name, shadow.name, request_id, exc
        )
        return
    if endpoint.feedback is not None:
        endpoint.feedback.record_array(request_id, shadow.name, _scored(answer), shadow=True)
    if state.predlog is not None:
        latency_ms = (time.perf_counter() - started) * 1000
        state.predlog.append(
            request_id,
            endpoint.name,
            shadow.name,
            rows.frame(),
            answer.frame(loaded.package.classes),
            latency_ms,
        )


# A request without an id gets this process's random prefix and a counter: unique across
# workers and restarts, without a system call per request as uuid4() makes.
_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """An id for a request that brought none."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def _prediction_items(package: Package, answer: Answer) -> list[dict[str, Any]]:
    """``POST .../predict``'s answer per row: the prediction and the class probabilities, or a
    ranking's score and rank (the request's rows ranked as one query's items)."""
    from mlsmith.runtime.outputs import ranks_within

    if package.decoder.kind == "ranking":
        scores = answer.labels.tolist()
        ranks = ranks_within(answer.labels).tolist()
        return [{"score": s, "rank": r} for s, r in zip(scores, ranks, strict=True)]
    names = [str(c) for c in package.classes]
    items = []
    for i, label in enumerate(answer.labels.tolist()):
        item: dict[str, Any] = {"prediction": label}
        if answer.proba is not None:
            item["probabilities"] = dict(zip(names, answer.proba[i].tolist(), strict=True))
        items.append(item)
    return items


def _scored(answer: Answer) -> np.ndarray:
    """What the feedback store scores: the probabilities, or the regression values."""
    return answer.proba if answer.proba is not None else answer.labels.astype(np.float64)
