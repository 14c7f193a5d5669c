"""What the secondary dialects (BFL, OpenAI Images) share: their own error shapes, pixel
sizes as aspect ratios.

A dialect keeps its error shape to its own routes with a route class (``error_route``):
the app-wide handlers in ``api/errors.py`` stay those of the primary dialect.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from fastapi.routing import APIRoute

log = logging.getLogger(__name__)

# Exception -> the dialect's error response; must answer every exception.
ErrorRenderer = Callable[[Request, Exception], Response]

# The ratios a pixel size is rounded to: the contract's listed ones and their portrait and
# landscape twins, all within the 3:7 .. 7:3 the models accept.
RATIOS = ("1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "7:3", "3:7")


def error_route(render: ErrorRenderer) -> type[APIRoute]:
    """A route class whose errors (validation, auth, service, unexpected) ``render`` shapes.

    Use as ``APIRouter(route_class=error_route(render))``.
    """

    class DialectRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                try:
                    return await handler(request)
                except Exception as exc:  # every failure is answered in the dialect's shape
                    return render(request, exc)

            return handle

    return DialectRoute


def log_unexpected(request: Request, exc: Exception) -> None:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)


def nearest_ratio(width: int, height: int) -> str:
    """The ratio in ``RATIOS`` closest to width:height (output is about 1 megapixel anyway)."""
    target = math.log(width / height)
    return min(RATIOS, key=lambda r: abs(math.log(int(r.split(":")[0]) / int(r.split(":")[1])) - target))
