"""The ASGI application factory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from darkroom import __version__
from darkroom.api import admin, bfl, events, media, openai_images, openapi, render, requestqueue, web
from darkroom.api.errors import install_error_handlers
from darkroom.api.limits import BodyLimits
from darkroom.domain import Request
from darkroom.retention import RetentionSweeper
from darkroom.service import Service
from darkroom.settings import Settings
from darkroom.wakeup import KEYS, AsyncHub
from darkroom.webhooks import WebhookDispatcher

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, service: Service | None = None) -> FastAPI:
    """Build the app. Settings come in from the edge; the service is built from them unless given."""
    service = service or Service.from_settings(settings)

    # One listener for the whole process: event streams and synchronous calls wait on it,
    # and a revoked or changed key is forgotten by the key cache as soon as it is signalled.
    hub = AsyncHub(service.store.wakeup)
    hub.on(KEYS, lambda signal: service.forget_keys(signal.payload))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dispatcher = _webhook_dispatcher(service, settings) if settings.webhook_dispatcher else None
        if dispatcher is not None:
            dispatcher.start()
        hub.start()
        sweeper = RetentionSweeper(service) if settings.retention_s else None
        if sweeper is not None:
            sweeper.start()
        try:
            yield
        finally:
            if sweeper is not None:
                sweeper.stop()
            hub.stop()
            if dispatcher is not None:
                await asyncio.to_thread(dispatcher.stop)  # waits for sends in flight

    app = FastAPI(
        title="darkroom",
        version=__version__,
        description="Self-hosted image generation with the hosted FLUX Kontext request-queue API.",
        lifespan=lifespan,
        docs_url=None, redoc_url=None,  # FastAPI's pages load from a CDN: web.include serves /docs
    )
    app.state.service = service
    app.state.settings = settings
    app.state.hub = hub
    install_error_handlers(app)
    app.add_middleware(BodyLimits, max_bytes=settings.max_body_bytes, read_timeout_s=settings.body_read_timeout_s,
                       min_rate_bytes_s=settings.body_min_rate_bytes_s)

    for prefix in requestqueue.PREFIXES:
        app.include_router(requestqueue.router, prefix=prefix,
                           include_in_schema=prefix == requestqueue.PREFIXES[0])
    app.include_router(media.router)
    app.include_router(openai_images.router)  # the other dialects: docs/dialects.md
    app.include_router(bfl.router)
    app.include_router(admin.router)
    events.include(app)
    web.include(app)  # the playground at /, and /docs with local assets (README, "Playground")

    @app.get("/healthz", tags=["ops"], summary="Liveness and database check")
    def healthz() -> dict[str, Any]:
        service.store.ping()  # not a count: that walks the whole table on PostgreSQL
        return {"status": "ok", "version": __version__, "models": service.registry.ids()}

    openapi.install(app, service)  # the registry's payloads and the dialects' bodies: api/openapi.py
    return app


def _webhook_dispatcher(service: Service, settings: Settings) -> WebhookDispatcher:
    """The webhook dispatcher, with this API's body renderer for each dialect."""
    dispatcher = WebhookDispatcher.from_settings(settings, service.store)

    def primary(request: Request) -> dict[str, Any]:
        body = render.status_object(service, settings.public_url or request.base_url or "http://localhost/", request)
        body.pop("webhooks", None)  # the deliveries' bookkeeping is not part of what they deliver
        return body

    dispatcher.register("requestqueue", primary)

    def bfl_result(request: Request) -> dict[str, Any]:
        return bfl.result_object(service, settings.public_url or request.base_url or "http://localhost/", request)

    # BFL sends the client's secret in X-Webhook-Secret; the body is get_result's answer.
    dispatcher.register("bfl", bfl_result, secret_header=True)
    return dispatcher
