"""The playground in a real browser: Playwright (from PyPI) driving Debian's Chromium against a
real ``darkroom serve`` on loopback with the tiny test models.

Chromium comes from the system (``apt-get install chromium``), never from ``playwright install``
(which downloads a browser build). Without it the tests FAIL with a message saying so, unless
DARKROOM_TEST_SKIP_BROWSER=1, which skips them. DARKROOM_TEST_CHROMIUM names another binary.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from darkroom.testing.api import start_deployment
from darkroom.testing.server import create_key

from _browser import CHROMIUM, CHROMIUM_ARGS, DESKTOP, open_with_key


def _no_browser(message: str) -> None:
    message += ("\nInstall it with `apt-get install -y chromium` (the tests drive the system's Chromium; "
                "never `playwright install`), or set DARKROOM_TEST_SKIP_BROWSER=1 to skip the browser tests.")
    if os.environ.get("DARKROOM_TEST_SKIP_BROWSER") == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One Chromium for a module, with a fresh profile (``--user-data-dir``) of its own.

    Module, not session: Playwright's sync API runs an asyncio loop in this thread while it is
    open, and the tests after these ones call ``asyncio.run``."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - the dev extra installs it
        _no_browser(f"the Python package playwright is not installed ({exc}): pip install -e '.[dev]'")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        found = shutil.which("chromium")
        _no_browser(f"Chromium was not found at {CHROMIUM}" + (f" (there is one at {found}: set "
                                                               "DARKROOM_TEST_CHROMIUM)" if found else ""))
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        try:
            context = pw.chromium.launch_persistent_context(
                str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport=DESKTOP, accept_downloads=True, color_scheme="light",
            )
        except Exception as exc:  # noqa: BLE001 - reported as a failure (or skip)
            _no_browser(f"Chromium at {CHROMIUM} did not start: {exc}")
        context.set_default_timeout(60_000)
        yield context
        context.close()


@pytest.fixture(scope="module")
def web_deployment(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path):
    """A real server with its worker; keys ``a`` and ``b``, and ``c`` made for the gallery test."""
    dep = start_deployment(tmp_path_factory.mktemp("web"), tiny_models)
    dep.c_key = create_key(dep.env, "carol")  # type: ignore[attr-defined]
    yield dep
    dep.server.stop()


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go (under pytest's temporary directory)."""
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture()
def page(browser_context, web_deployment, request):
    """A new tab on the playground, with key ``a`` already stored (as after entering it once).

    On teardown: no request went to any host but the server, and no script error happened.
    """
    tab = open_with_key(browser_context, web_deployment.server.url, web_deployment.a.key)
    recorded = tab.recorded
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.get_by_label("Prompt", exact=True).wait_for()
    yield tab
    try:
        assert not recorded.foreign(), f"requests to other hosts: {recorded.foreign()}"
        assert not errors, f"script errors on the page: {errors}"
    finally:
        tab.close()
