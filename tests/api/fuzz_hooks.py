"""Schemathesis hooks for darkroom's OpenAPI document (``SCHEMATHESIS_HOOKS=fuzz_hooks``).

The document marks with a format what no JSON Schema keyword can say (``api/openapi.py``):
``aspect-ratio`` (``W:H`` from 3:7 to 7:3), ``image`` (base64, a ``data:`` URL or an http(s)
URL of a real image) and ``uri`` on webhook URLs (which must reach a host the server may call).
A fuzzer cannot draw such values, nor tell a valid one from an invalid one, so
``before_load_schema`` narrows each of them, in the fuzzer's copy of the document, to an
``enum`` of values the server accepts: everything else is then, rightly, negative data. The
OpenAI edits' uploads (``binary``) get real images' bytes.

One refusal is no schema's to predict: the OpenAI dialect answers a generated image that
moderation blocks with OpenAI's 400 ``content_policy_violation`` (the other dialects accept the
request and report the outcome). ``filter_failure`` lets that answer, and only that, pass
positive_data_acceptance.

``FUZZ_ORIGIN`` (``http://127.0.0.1:PORT``, an HTTP server the test runs, allow-listed by the
server under test) serves the image and takes webhooks. No request may send the server
anywhere else: ``filter_body`` drops generated bodies with any other http(s) URL, and
``before_call`` rewrites one that got through (a phase that does not filter) to the origin's,
so the server under test never calls a host off this machine, whatever the fuzzer draws.
"""

from __future__ import annotations

import base64
import io
import os
from typing import Any

import schemathesis
from hypothesis import strategies as st
from PIL import Image
from schemathesis.openapi.checks import RejectedPositiveData

ORIGIN = os.environ["FUZZ_ORIGIN"].rstrip("/")
IMAGE_URL = f"{ORIGIN}/image.png"
WEBHOOK_URL = f"{ORIGIN}/hook"


def _png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


PNGS = [_png((64, 48), (200, 30, 30)), _png((40, 64), (20, 160, 90))]

#: Each format's values the server accepts (some at the edges of what it accepts).
NARROWED: dict[str, list[str]] = {
    "aspect-ratio": ["1:1", "16:9", "9:16", "4:3", "3:7", "7:3", "5 : 4", "99999:42857", "00002:3"],
    "image": [base64.b64encode(p).decode() for p in PNGS]
    + [f"data:image/png;base64,{base64.b64encode(PNGS[0]).decode()}", IMAGE_URL],
    "uri": [WEBHOOK_URL],
}


def _narrow(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _narrow(item)
        return
    if not isinstance(node, dict):
        return
    values = NARROWED.get(node.get("format"))
    if values is not None:
        nullable = isinstance(node.get("type"), list) and "null" in node["type"]
        for keyword in ("format", "pattern", "minLength", "maxLength"):
            node.pop(keyword, None)
        node["enum"] = values + ([None] if nullable else [])
    for value in node.values():
        _narrow(value)


@schemathesis.hook
def before_load_schema(context: schemathesis.HookContext, raw_schema: dict[str, Any]) -> None:
    _narrow(raw_schema)


schemathesis.openapi.format("binary", st.sampled_from(PNGS))


@schemathesis.hook
def filter_failure(context: schemathesis.HookContext, failure: Any, case: schemathesis.Case,
                   response: schemathesis.Response) -> bool:
    """Keep every failure but a schema-valid request refused because its image was moderated."""
    if response.status_code != 400 or not isinstance(failure, RejectedPositiveData):
        return True
    try:
        return response.json()["error"]["code"] != "content_policy_violation"
    except (ValueError, KeyError, TypeError):
        return True


def _urls(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.lower().startswith(("http://", "https://")) else []
    if isinstance(value, dict):
        return [u for v in value.values() for u in _urls(v)]
    if isinstance(value, list):
        return [u for v in value for u in _urls(v)]
    return []


@schemathesis.hook
def filter_body(context: schemathesis.HookContext, body: Any) -> bool:
    return all(url in (IMAGE_URL, WEBHOOK_URL) for url in _urls(body))


def _keep_local(value: Any) -> Any:
    """``value`` with every http(s) URL off the loopback origin replaced by the origin's."""
    if isinstance(value, str) and value.lower().startswith(("http://", "https://")) and \
            not value.startswith(ORIGIN + "/"):
        return IMAGE_URL
    if isinstance(value, dict):
        return {k: _keep_local(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_keep_local(v) for v in value]
    return value


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    # Assigned only when a URL changes: schemathesis re-judges an edited case (positive or negative).
    if isinstance(case.body, (dict, list)) and (local := _keep_local(case.body)) != case.body:
        case.body = local
