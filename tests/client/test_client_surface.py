"""The SDK's public surface: what ``darkroom.client`` exports and what it does not pull in."""

from __future__ import annotations

import inspect
import subprocess
import sys

import darkroom.client
from darkroom.client import AsyncClient, Client, DarkroomError, Status, _errors, _models


def test_all_names_are_exported_and_nothing_else_is_public():
    public = {name for name in dir(darkroom.client) if not name.startswith("_")}
    assert public == set(darkroom.client.__all__)
    assert len(darkroom.client.__all__) == len(set(darkroom.client.__all__))


def test_every_error_and_model_class_is_exported():
    for module in (_errors, _models):
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and obj.__module__ == module.__name__ and not name.startswith("_"):
                assert name in darkroom.client.__all__, name
    errors = {
        cls.__name__
        for cls in vars(_errors).values()
        if inspect.isclass(cls) and issubclass(cls, DarkroomError)
    }
    assert errors <= set(darkroom.client.__all__)


def test_async_client_mirrors_client_method_for_method():
    def methods(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(fn)
            for name, fn in vars(cls).items()
            if inspect.isfunction(fn) and not name.startswith("_")
        }

    sync, async_ = methods(Client), methods(AsyncClient)
    assert set(sync) - {"close"} == set(async_) - {"aclose"}
    for name, signature in sync.items():
        if name == "close":
            continue
        # same parameters (return annotations are the same strings too)
        assert str(async_[name]) == str(signature), name
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name


def test_status_words_are_the_contracts():
    assert [s.value for s in Status] == ["queued", "processing", "success", "failed", "cancelled"]
    assert {s for s in Status if s.is_terminal} == {Status.SUCCESS, Status.FAILED, Status.CANCELLED}


def test_importing_the_sdk_pulls_in_no_server_code():
    code = (
        "import sys, darkroom.client\n"
        "heavy = {'torch', 'fastapi', 'sqlalchemy', 'pydantic', 'starlette', 'diffusers', 'numpy'}\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in heavy]\n"
        "bad += [m for m in sys.modules if m.startswith('darkroom.')"
        " and not m.startswith('darkroom.client')]\n"
        "print(','.join(sorted(bad)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_repr_never_shows_the_api_key():
    client = Client("http://127.0.0.1:8000", api_key="dr_secret")
    try:
        assert "dr_secret" not in repr(client)
        assert repr(client) == "Client(base_url='http://127.0.0.1:8000')"
    finally:
        client.close()
