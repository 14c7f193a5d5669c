"""Model aliases: none by default; from the registry file, DARKROOM_ALIASES and ``serve --alias``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from darkroom.engines.registry import load_registry
from darkroom.testing.server import Server, create_key, darkroom_env, free_port

PRIMARY = "/api/v1/ie/requestqueue/apikey"


def _get(url: str, key: str, path: str) -> httpx.Response:
    return httpx.get(f"{url}{PRIMARY}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=30)


@pytest.fixture(scope="module")
def aliased(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path):
    """One alias from the environment, one from the command line. No worker: test_bfl.py generates
    through an alias end to end; here the API side is enough."""
    root = tmp_path_factory.mktemp("aliased")
    env = darkroom_env(root / "data", tiny_models, DARKROOM_ALIASES=json.dumps(["dall-e-3=tiny"]))
    key = create_key(env, "alice")
    server = Server(env, root / "serve.log", worker=False, extra_args=["--alias", "flux-kontext-pro=tiny-edit"]).start()
    yield server, key
    server.stop()


def test_model_info_shows_aliases(aliased) -> None:
    server, key = aliased
    assert _get(server.url, key, "/models/tiny-edit").json()["aliases"] == ["flux-kontext-pro"]
    assert _get(server.url, key, "/models/tiny").json()["aliases"] == ["dall-e-3"]
    assert _get(server.url, key, "/models/tiny-slow").json()["aliases"] == []
    by_alias = _get(server.url, key, "/models/flux-kontext-pro").json()
    assert by_alias["model"] == "tiny-edit"  # the record is the model's, under its own id
    listed = _get(server.url, key, "/models").json()
    assert sorted(listed["model_ids"]) == ["tiny", "tiny-edit", "tiny-full", "tiny-slow"]  # ids only
    openai_ids = {m["id"] for m in httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {key}"},
                                             timeout=30).json()["data"]}
    assert openai_ids == {"tiny", "tiny-edit", "tiny-full", "tiny-slow", "dall-e-3", "flux-kontext-pro"}


def test_submit_through_an_alias(aliased) -> None:
    server, key = aliased
    headers = {"Authorization": f"Bearer {key}"}
    resp = httpx.post(f"{server.url}{PRIMARY}/requests", headers=headers, timeout=30,
                      json={"model": "dall-e-3", "payload": {"prompt": "a red circle", "steps": 1}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == "tiny"  # stored under the model's id
    rid = resp.json()["request_id"]
    assert _get(server.url, key, f"/requests/{rid}").json()["status"] == "queued"
    bfl = httpx.post(f"{server.url}/v1/flux-kontext-pro", headers={"x-key": key}, json={"prompt": "x"}, timeout=30)
    assert bfl.status_code == 200, bfl.text
    assert _get(server.url, key, f"/requests/{bfl.json()['id']}").json()["model"] == "tiny-edit"
    by_alias = _get(server.url, key, "/requests?model_id=dall-e-3").json()
    assert rid in {r["request_id"] for r in by_alias["requests"]}


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path):
    root = tmp_path_factory.mktemp("plain")
    env = darkroom_env(root / "data", tiny_models)
    key = create_key(env, "alice")
    server = Server(env, root / "serve.log", worker=False).start()
    yield server, key
    server.stop()


def test_without_alias_the_name_is_unknown_in_every_dialect(plain) -> None:
    server, key = plain
    assert _get(server.url, key, "/models/flux-kontext-pro").status_code == 404
    assert _get(server.url, key, "/models/tiny-edit").json()["aliases"] == []
    submit = httpx.post(f"{server.url}{PRIMARY}/requests", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                        json={"model": "flux-kontext-pro", "payload": {"prompt": "x"}})
    assert submit.status_code == 404 and submit.json()["error"]["code"] == "model_not_found"
    bfl = httpx.post(f"{server.url}/v1/flux-kontext-pro", headers={"x-key": key}, json={"prompt": "x"}, timeout=30)
    assert bfl.status_code == 404
    oai = httpx.post(f"{server.url}/v1/images/generations", headers={"Authorization": f"Bearer {key}"},
                     json={"model": "dall-e-3", "prompt": "x"}, timeout=30)
    assert oai.status_code == 404 and oai.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(("alias", "message"), [
    ("flux-kontext-pro=no-such-model", "unknown model 'no-such-model'"),
    ("tiny=tiny-edit", "'tiny' of model 'tiny-edit' is already a model id"),
    ("flux-kontext-pro", "must look like NAME=MODEL"),
])
def test_bad_alias_stops_the_start(tmp_path: Path, tiny_models: Path, alias: str, message: str) -> None:
    env = darkroom_env(tmp_path / "data", tiny_models)
    proc = subprocess.run([sys.executable, "-m", "darkroom.cli", "serve", "--port", str(free_port()), "--alias", alias],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert message in " ".join(proc.stderr.replace("│", " ").split())  # rich boxes and wraps it


# -- the registry rules, without a server ------------------------------------------------------------


def test_registry_alias_rules(tiny_models: Path, tmp_path: Path) -> None:
    registry = load_registry(tiny_models, aliases=["a=tiny", "b=tiny", "a=tiny"])  # a repeat is harmless
    assert registry.get("a").id == registry.get("b").id == "tiny"
    assert registry.models["tiny"].aliases == ("a", "b")
    with pytest.raises(ValueError, match="claimed by both"):
        load_registry(tiny_models, aliases=["a=tiny", "a=tiny-edit"])
    with pytest.raises(ValueError, match="may not contain"):
        load_registry(tiny_models, aliases=["a/b=tiny"])
    clash = tmp_path / "models.toml"
    clash.write_text(tiny_models.read_text() + '\n[models.other]\npipeline = "flux"\npath = "x"\naliases = ["tiny"]\n')
    with pytest.raises(ValueError, match="already a model id"):
        load_registry(clash)
