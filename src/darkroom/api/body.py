"""Reading a JSON request body, with each way it can be unreadable named.

FastAPI's own body parsing answers a body that is not UTF-8 with a bare 400, one sent with
another content type with a type error about the whole body, and takes ``NaN`` (which is not
JSON) as a number. The routes that take a JSON object read it here instead, and each failure
is an error of darkroom's tree that every dialect renders in its own shape:

- no body: ``InvalidField("body", "is required ...")``;
- a ``Content-Type`` that is not JSON (``application/json`` or ``application/*+json``; none at
  all is read as JSON): ``UnsupportedMediaType`` (415);
- bytes that are not UTF-8, text that is not JSON (``NaN``, ``Infinity``, nesting too deep, an
  integer of more than 4300 digits): ``InvalidField("body", "is not valid JSON ...")``;
- JSON that is not an object: ``InvalidField("body", "must be a JSON object")``.

JSON has one number type: ``3.0`` is the integer 3 (JSON Schema says so too), so a number
without a fraction is read as an int (up to 2**63; beyond that a float, which no integer
field of darkroom's admits anyway).
"""

from __future__ import annotations

import json
from decimal import Decimal
from email.message import Message
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from darkroom.errors import DarkroomError, InvalidField

M = TypeVar("M", bound=BaseModel)


class UnsupportedMediaType(DarkroomError):
    """The body is sent with a content type the route does not read (415)."""

    status_code = 415
    code = "unsupported_media_type"


def is_json_type(content_type: str | None) -> bool:
    """Whether a Content-Type header names JSON (``application/json``, ``application/*+json``)."""
    if not content_type:
        return True  # curl --data-binary and friends: read as JSON, as FastAPI does
    message = Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _number(text: str) -> int | float:
    value = float(text)
    if value.is_integer() and abs(value) < 2**63:
        return int(Decimal(text))  # exact: float("9007199254740993.0") would round
    return value


def decode_json_object(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """The JSON object in ``raw``; raises UnsupportedMediaType or InvalidField (field ``body``)."""
    if not is_json_type(content_type):
        raise UnsupportedMediaType(f"send the body as application/json, not {content_type}")
    if not raw.strip():
        raise InvalidField("body", "is required: send a JSON object")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant, parse_float=_number)
    except UnicodeDecodeError as exc:
        raise InvalidField("body", f"is not valid JSON: not UTF-8 at byte {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidField("body", f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except (ValueError, RecursionError) as exc:  # NaN, Infinity; too many digits; nested too deep
        raise InvalidField("body", f"is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidField("body", "must be a JSON object")
    return data


async def json_object(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object (a FastAPI dependency); see ``decode_json_object``."""
    return decode_json_object(await request.body(), request.headers.get("content-type"))


def validated(model: type[M], data: dict[str, Any]) -> M:
    """``data`` as ``model``; a refusal is the RequestValidationError FastAPI would raise for a
    body parameter (locations start with ``body``), so each dialect's handler renders it."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=data) from None
