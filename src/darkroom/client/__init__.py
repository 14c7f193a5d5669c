"""darkroom's Python SDK: a client for the request-queue API, sync and async.

It needs only httpx and the standard library, never the server's code::

    from darkroom.client import Client, RequestFailed

    with Client("http://127.0.0.1:8000", api_key="dr_...") as client:
        # submit + wait in one call; payload fields are keywords
        try:
            result = client.generate(
                "darkroom-mini",
                "a lighthouse at dusk, 35mm film",
                aspect_ratio="16:9",
                seed=1,
                output_format="png",
                on_update=lambda s: print(s.status, s.progress and s.progress.fraction),
            )
        except RequestFailed as exc:
            print("failed:", exc.code, exc.message)  # e.g. input_moderated
        else:
            open("out.png", "wb").write(client.download(result))

        # or step by step
        request = client.submit("darkroom-mini", prompt="a red fox in snow")
        status = client.wait(request, timeout=120)    # WaitTimeout if not done in time
        if status.succeeded:
            print(status.urls, status.outcome["seed"])
        page = client.list(status="success", limit=10)
        print(page.total, [r.request_id for r in page])

``wait`` (and so ``generate``) follows the request's live events stream
(``GET .../requests/{id}/events``, docs/events.md), so a change, and the end, is seen
as soon as the server sees it; where the stream cannot be had (an older server, a proxy
that blocks it) it falls back to polling every ``poll_interval`` seconds, and
``stream=False`` polls from the start.

The async twin has the same methods::

    async with AsyncClient("http://127.0.0.1:8000", api_key="dr_...") as client:
        result = await client.generate("darkroom-mini", "a lighthouse at dusk")
        image = await client.download(result)

Every error is a ``DarkroomError`` with ``.status_code``, ``.code``, ``.message``
and ``.field``; the subclasses follow the HTTP status (see ``_errors`` for the tree).
"""

from ._async import AsyncClient
from ._errors import (
    AuthenticationError,
    ConflictError,
    ConnectionError,  # noqa: A004 - the SDK's own, like requests'
    DarkroomError,
    InvalidRequest,
    NotFoundError,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    RequestFailed,
    ServerError,
    ServiceUnavailable,
    WaitTimeout,
)
from ._models import Progress, RequestPage, RequestStatus, Status
from ._sync import Client

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "ConnectionError",
    "DarkroomError",
    "InvalidRequest",
    "NotFoundError",
    "PayloadTooLarge",
    "PermissionDenied",
    "Progress",
    "RateLimited",
    "RequestFailed",
    "RequestPage",
    "RequestStatus",
    "ServerError",
    "ServiceUnavailable",
    "Status",
    "WaitTimeout",
]
