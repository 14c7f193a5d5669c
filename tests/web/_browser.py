"""What the browser tests share: how Chromium is launched, the page's storage key, a request log."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

CHROMIUM = os.environ.get("DARKROOM_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
KEY_STORAGE = "darkroom.apiKey"  # the page's localStorage entry (web/app.js)
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


class Recorded:
    """Every request a page made, to check that none went to another host."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.urls: list[str] = []

    def __call__(self, request) -> None:  # noqa: ANN001 - playwright's Request
        self.urls.append(request.url)

    def foreign(self) -> list[str]:
        server = urlsplit(self.origin)
        return [u for u in self.urls
                if urlsplit(u).scheme not in ("data", "blob")
                and (urlsplit(u).scheme, urlsplit(u).netloc) != (server.scheme, server.netloc)]


def open_with_key(context, origin: str, key: str | None):  # noqa: ANN001, ANN201 - playwright types
    """A new tab on the playground as it is once ``key`` has been entered (None: no key stored).

    The key is put in storage from another page of the same origin first, so that the
    playground's own start (which uses the stored key) cannot race with the change.
    """
    tab = context.new_page()
    recorded = Recorded(origin)
    tab.on("request", recorded)
    tab.recorded = recorded
    tab.goto(origin + "/healthz")
    if key is None:
        tab.evaluate("(k) => localStorage.removeItem(k)", KEY_STORAGE)
    else:
        tab.evaluate("([k, v]) => localStorage.setItem(k, v)", [KEY_STORAGE, key])
    tab.goto(origin + "/")
    return tab
