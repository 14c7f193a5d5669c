"""The OpenAPI document is the contract: schemathesis, every check on, against a real
``darkroom serve`` on loopback, over all three dialects' operations.

Schemathesis runs as its CLI (in a subprocess), the way a user or the issue's reporter runs it:
one command runs all its phases (examples, coverage, fuzzing, stateful through the document's
links), prints its own report, and exits non-zero on any failure. The document's formats get
their strategies from ``fuzz_hooks.py`` (loaded with SCHEMATHESIS_HOOKS). Status, cancel and
events are reached with real ids through the links from each submit; ``/media`` with a real
signed URL from a finished request (its parameters pinned in the run's config file).

A fixed seed (``DARKROOM_FUZZ_SEED`` to try another) keeps CI's run reproducible; the number of
cases per operation is ``DARKROOM_FUZZ_EXAMPLES``. One schemathesis worker: with two, CPython
3.11's ``ast.parse`` (which Hypothesis runs to describe schemathesis' lambdas) can fail with
"AST constructor recursion depth mismatch" when both threads parse at once.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from darkroom.testing.api import BASE, Api
from darkroom.testing.server import Server, create_key, darkroom_env, run_cli

HOOKS_DIR = Path(__file__).parent
SEED = int(os.environ.get("DARKROOM_FUZZ_SEED", "20261204"))
EXAMPLES = int(os.environ.get("DARKROOM_FUZZ_EXAMPLES", "20"))
# Every check schemathesis has but max_response_time: a speed target belongs in bench/, not in
# a test (``--checks all`` would add it with a 10 s limit).
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance", "response_headers_conformance",
          "response_schema_conformance", "negative_data_rejection", "positive_data_acceptance",
          "missing_required_header", "unsupported_method", "allow_header_conformance", "use_after_free",
          "ensure_resource_availability", "ignored_auth", "object_level_authorization")
# The OpenAI calls wait for their images: fewer of them keep the run within its time.
OPENAI_EXAMPLES = max(1, EXAMPLES // 4)

# Two models of the tiny weights with few steps (the worker keeps up with the fuzzer), one of
# them editing; FLUX.2 and Kontext names aliased to it, so the BFL dialect's per-model routes
# (FLUX.2's safety_tolerance range among them) are fuzzed too.
REGISTRY = """
default = "fuzz-t2i"

[models.fuzz-t2i]
pipeline = "flux"
path = "{t2i}"
brief_description = "tiny random FLUX, few steps"
[models.fuzz-t2i.parameters]
steps = {{ default = 1, minimum = 1, maximum = 3 }}
[models.fuzz-t2i.options]
native_area = 4096
max_sequence_length = 16

[models.fuzz-edit]
pipeline = "flux-kontext"
path = "{kontext}"
brief_description = "tiny random FLUX Kontext, few steps"
aliases = ["flux-kontext-pro", "flux-2-pro"]
[models.fuzz-edit.parameters]
steps = {{ default = 1, minimum = 1, maximum = 3 }}
[models.fuzz-edit.options]
native_area = 4096
max_sequence_length = 16
"""


class _Origin(BaseHTTPRequestHandler):
    """The one place off the server the fuzzed requests may send it: an image and a webhook receiver."""

    png = b""

    def do_GET(self) -> None:  # http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.png)))
        self.end_headers()
        self.wfile.write(self.png)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 90, 200)).save(buf, format="PNG")
    _Origin.png = buf.getvalue()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path, origin: str):
    """A server on the fuzz registry, with keys for the fuzzer (alice, and carol as her peer; bob
    for the OpenAI calls, so that they do not queue behind alice's backlog) and an admin key."""
    root = tmp_path_factory.mktemp("fuzz")
    tiny = tomllib.loads(tiny_models.read_text())["models"]
    registry = root / "models.toml"
    registry.write_text(REGISTRY.format(t2i=tiny["tiny"]["path"], kontext=tiny["tiny-edit"]["path"]))
    env = darkroom_env(root / "data", registry,
                       DARKROOM_URL_ALLOWLIST="127.0.0.1",  # the origin, and nothing else off the public net
                       DARKROOM_EVENTS_MAX_S="3",  # an events stream of a queued request ends soon
                       DARKROOM_IMAGE_MODERATION="fallback")
    keys = {name: create_key(env, name) for name in ("alice", "bob", "carol")}
    keys["admin"] = run_cli(["keys", "create", "--name", "admin", "--admin"], env).strip().splitlines()[-1]
    server = Server(env, root / "serve.log").start()
    yield server, keys, root
    server.stop()


def _signed_media(url: str, key: str) -> dict[str, str]:
    """blob_key, exp and sig of a finished request's result URL."""
    api = Api(url, key)
    done = api.wait(api.submit("fuzz-t2i", prompt="a red circle")["request_id"])
    assert done["status"] == "success", done
    media = urlsplit(done["outcome"]["media_urls"][0]["url"])
    query = {k: v[0] for k, v in parse_qs(media.query).items()}
    return {"blob_key": media.path.removeprefix("/media/"), "exp": query["exp"], "sig": query["sig"]}


def _auth_file(path: Path, keys: dict[str, str]) -> Path:
    """Web Fuzzing Commons users: alice fuzzes; carol is her peer, whom object_level_authorization
    uses to check that one key never reads another's requests."""
    users = [{"name": name, "fixedHeaders": [{"name": "Authorization", "value": f"Bearer {keys[name]}"},
                                             {"name": "x-key", "value": keys[name]}]}
             for name in ("alice", "carol")]
    path.write_text(json.dumps({"auth": users}))
    return path


def _config(keys: dict[str, str], media: dict[str, str], auth: Path) -> str:
    return f"""
[auth.wfc]
path = "{auth}"
user = "alice"
peers = ["alice", "carol"]

[[operations]]
include-path-regex = "^/v1/images/"
headers = {{ Authorization = "Bearer {keys['bob']}" }}
generation.max-examples = {OPENAI_EXAMPLES}

[[operations]]
include-path = "/api/v1/admin/workers"
headers = {{ Authorization = "Bearer {keys['admin']}" }}

[[operations]]
include-path = "/media/{{blob_key}}"
parameters = {{ blob_key = "{media['blob_key']}", exp = {media['exp']}, sig = "{media['sig']}" }}
"""


def _answered(har: Path) -> dict[tuple[str, str], set[int]]:
    """Status codes seen per (method, path) in schemathesis' HAR report."""
    seen: dict[tuple[str, str], set[int]] = {}
    for entry in json.loads(har.read_text())["log"]["entries"]:
        key = (entry["request"]["method"], urlsplit(entry["request"]["url"]).path)
        seen.setdefault(key, set()).add(entry["response"]["status"])
    return seen


def test_schemathesis_finds_no_failure_in_any_dialect(fuzzed, origin: str, tmp_path: Path) -> None:
    server, keys, _ = fuzzed
    media = _signed_media(server.url, keys["alice"])
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(keys, media, _auth_file(tmp_path / "auth.json", keys)))
    har = tmp_path / "run.har"
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{server.url}/openapi.json",
           "--checks", ",".join(CHECKS), "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--workers", "1",
           "--request-timeout", "120", "--report", "har", "--report-har-path", str(har)]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "fuzz_hooks", "FUZZ_ORIGIN": origin,
           "PYTHONPATH": os.pathsep.join([str(HOOKS_DIR), os.environ.get("PYTHONPATH", "")]),
           "NO_COLOR": "1", "COLUMNS": "120"}
    run = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    report = run.stdout + run.stderr
    print(report)
    assert run.returncode == 0, f"schemathesis found failures (exit {run.returncode}); its report:\n{report}"

    # Every operation was reached, and answered 2xx at least once: the schema is typed enough
    # for a fuzzer to get requests accepted, and the links carried real ids to the reads. (A
    # cancel may come after its request ended: 409 also says the id was a real one.)
    document = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    seen = _answered(har)
    for path, item in document["paths"].items():
        for method in item:
            if path == "/v1/{model}":
                continue  # every name it takes is one no model answers to: 404 by design
            concrete = [codes for (m, p), codes in seen.items() if m == method.upper() and _matches(path, p)]
            answered = set().union(*concrete) if concrete else set()
            wanted = {200, 409} if path.endswith("/cancel") else set(range(200, 300))
            assert answered & wanted, f"{method.upper()} {path}: none of {sorted(answered)} is a success"

    # Most fuzzed submits were accepted (the request list counts alice's and bob's).
    for key in (keys["alice"], keys["bob"]):
        total = httpx.get(f"{server.url}{BASE}/requests", params={"limit": 1},
                          headers={"Authorization": f"Bearer {key}"}, timeout=30).json()["total"]
        assert total >= 5, total


def _matches(template: str, path: str) -> bool:
    """Whether a concrete ``path`` is an instance of the document's ``template``."""
    pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
    if template.startswith("/media/"):
        pattern = pattern.replace("[^/]+", ".+")
    return re.fullmatch(pattern, path) is not None
