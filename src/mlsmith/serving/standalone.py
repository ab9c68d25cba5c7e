"""Served names outside A/B routes: packages that answer something other than one prediction
per row (a forecasting package's series, a scene package's masks or boxes).

Each kind answers the same paths as a row model (metadata, readiness, ``infer``, ``predict``)
through the :class:`StandaloneEndpoint` interface; :mod:`.forecasts` and :mod:`.scenes` say
what each sends and answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mlsmith.serving.protocol import InferRequest, Tensor


class StandaloneEndpoint(Protocol):
    """A served name with no row signature: it answers whole requests."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def feedback_refusal(self) -> str:
        """Why ``/feedback`` does not apply (the 400's message)."""
        ...

    def metadata(self) -> dict[str, Any]:
        """The v2 model metadata."""
        ...

    async def infer(self, request: InferRequest) -> list[Tensor]:
        """A v2 inference request's output tensors (ProtocolError for bad input)."""
        ...

    async def predict_json(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST .../predict``'s answer, beside the name, version and id."""
        ...


def load_standalone(
    name: str, reference: str, tracking_uri: str | None
) -> StandaloneEndpoint | None:
    """The served name's forecasting or scene package, or None when ``reference`` is a row
    model."""
    from mlsmith.registry.loading import load_any
    from mlsmith.runtime.forecaster import SavedForecaster
    from mlsmith.runtime.scene_package import ScenePackage
    from mlsmith.serving.forecasts import ForecastEndpoint
    from mlsmith.serving.models import REGISTRY_PREFIX, registry_version
    from mlsmith.serving.scenes import SceneEndpoint

    version = "1"
    source = reference
    if reference.startswith(REGISTRY_PREFIX):
        version = registry_version(reference, tracking_uri)
        model = reference[len(REGISTRY_PREFIX) :].split("@")[0].split("/")[0]
        source = f"{REGISTRY_PREFIX}{model}/{version}"
    loaded = load_any(source, tracking_uri=tracking_uri)
    if isinstance(loaded, SavedForecaster):
        return ForecastEndpoint(name, loaded, version, reference)
    if isinstance(loaded, ScenePackage):
        return SceneEndpoint(name, loaded, version, reference)
    return None
