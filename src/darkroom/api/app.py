"""The ASGI application factory."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from darkroom import __version__
from darkroom.api import media, requestqueue
from darkroom.api.errors import install_error_handlers
from darkroom.api.limits import BodySizeLimit
from darkroom.service import Service
from darkroom.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, service: Service | None = None) -> FastAPI:
    """Build the app. Settings come in from the edge; the service is built from them unless given."""
    service = service or Service.from_settings(settings)
    app = FastAPI(
        title="darkroom",
        version=__version__,
        description="Self-hosted image generation with the hosted FLUX Kontext request-queue API.",
    )
    app.state.service = service
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    for prefix in requestqueue.PREFIXES:
        app.include_router(requestqueue.router, prefix=prefix,
                           include_in_schema=prefix == requestqueue.PREFIXES[0])
    app.include_router(media.router)

    @app.get("/healthz", tags=["ops"], summary="Liveness and database check")
    def healthz() -> dict[str, Any]:
        service.store.count_requests()
        return {"status": "ok", "version": __version__, "models": service.registry.ids()}

    app.openapi = lambda: _openapi(app, service)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI, service: Service) -> dict[str, Any]:
    """The generated schema, with each model's payload spelled out from the registry.

    The payload is validated against the registry at run time, so the document is built
    from the same parameter specs rather than from a hand-kept pydantic copy.
    """
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    variants = []
    for model_id in service.registry.ids():
        spec = service.registry.get(model_id)
        name = "Payload_" + "".join(c if c.isalnum() else "_" for c in model_id)
        components[name] = {
            "title": f"Payload for {model_id}",
            "type": "object",
            "additionalProperties": False,
            "required": [p.name for p in spec.parameters if p.required],
            "properties": {p.name: p.json_schema() for p in spec.parameters},
        }
        variants.append({"$ref": f"#/components/schemas/{name}"})
    body = components.get("SubmitBody")
    if body and variants:
        body["properties"]["payload"] = {
            "description": "Generation parameters; which apply depends on `model` (see each Payload_ schema).",
            "anyOf": variants,
        }
    app.openapi_schema = schema
    return schema
