"""The web playground at ``/`` and the API docs at ``/docs``, both served from files
shipped in the package: the page makes no request to any host but this server (no CDN).

The playground is a small framework-free page (``web/index.html``, ``web/app.js``,
``web/style.css``; no build step): it talks to the request-queue API with the key the user
types in, as any client would (see docs/api.md). Swagger UI comes from the
``fastapi-offline`` package, which ships its bundle (Swagger UI 5: it renders the OpenAPI 3.1
document FastAPI writes, which the 4.x bundle of ``swagger-ui-bundle`` cannot).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from darkroom.errors import NotFound

#: The playground's own files.
WEB_DIR = Path(str(resources.files("darkroom.api") / "web"))

#: Everything /web/ serves: name -> content type. A fixed list, so no path ever reaches the disk
#: unchecked.
_ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_VENDOR = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}

# The page's scripts and styles come only from this server; images (results, previews) may come
# from wherever result links point (DARKROOM_PUBLIC_URL, a blob store's presigned URLs).
_PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: http: https:; "
             "connect-src 'self' http: https:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
             "form-action 'none'")
_REVALIDATE = {"Cache-Control": "no-cache"}  # a new darkroom version serves its new files at once

router = APIRouter(include_in_schema=False)


def _vendor_dir() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


@router.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
def playground() -> HTMLResponse:
    html = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers={**_REVALIDATE, "Content-Security-Policy": _PAGE_CSP,
                                       "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})


@router.get("/web/{name}")
def asset(name: str) -> FileResponse:
    if name not in _ASSETS:
        raise NotFound(f"no such file: {name}", code="not_found")
    return FileResponse(WEB_DIR / name, media_type=_ASSETS[name],
                        headers={**_REVALIDATE, "X-Content-Type-Options": "nosniff"})


@router.get("/web/vendor/{name}")
def vendor_asset(name: str) -> FileResponse:
    if name not in _VENDOR:
        raise NotFound(f"no such file: {name}", code="not_found")
    return FileResponse(_vendor_dir() / name, media_type=_VENDOR[name],
                        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"})


def include(app: FastAPI) -> None:
    """Add the playground, and /docs with local assets (the app is built with ``docs_url=None,
    redoc_url=None``: FastAPI's own pages load Swagger UI and ReDoc from a CDN; ReDoc's bundle
    also fetches its logo from one, so there is no /redoc)."""
    app.include_router(router)
    openapi_url = app.openapi_url or "/openapi.json"
    title = app.title

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=openapi_url, title=f"{title} - API docs",
                                   swagger_js_url="/web/vendor/swagger-ui-bundle.js",
                                   swagger_css_url="/web/vendor/swagger-ui.css",
                                   swagger_favicon_url="/web/favicon.svg",
                                   # no validator badge: it would send the document to validator.swagger.io
                                   swagger_ui_parameters={"validatorUrl": None})
