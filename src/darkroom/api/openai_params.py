"""The OpenAI Images dialect's parameters: what a generations or edits call may carry, and the
darkroom requests it asks for.

Types are checked first (``ImageParams``, strict: JSON's ``"2"`` is not ``2``), then values
(``map_call``); darkroom's own payload fields (``EXTENSIONS``) and the prompt are the model's to
check, in ``Service.submit``. ``GENERATION_SCHEMA`` and ``EDIT_SCHEMA`` say the same for the
OpenAPI document (``api/openapi.py`` adds each model's own fields): keep the three together.
What is accepted, mapped or ignored: docs/dialects.md.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from darkroom.api.body import UnsupportedMediaType
from darkroom.api.dialect import nearest_ratio
from darkroom.engines.params import INPUT_IMAGE_FIELDS
from darkroom.errors import InvalidField
from darkroom.service import Service

MAX_N = 4
MAX_SEED = 2147483647
MAX_SIDE = 99999
LOW_MODERATION_TOLERANCE = 4  # `moderation: "low"`: more permissive than the default 2, not the most

# darkroom's own payload fields, for callers that want them (extra_body in the client).
EXTENSIONS = ("seed", "steps", "guidance", "safety_tolerance", "prompt_upsampling", "aspect_ratio")
FORM_INTS = frozenset({"n", "seed", "steps", "safety_tolerance", "output_compression", "partial_images",
                       "frame_count", "frame_duration_ms"})
_SIZE_RE = re.compile(r"([1-9][0-9]{0,4})[xX]([1-9][0-9]{0,4})")
RESPONSE_FORMATS = ("url", "b64_json")
OUTPUT_FORMATS = ("png", "jpeg", "jpg")


class OpenAIError(Exception):
    """An error of this dialect's wire that no darkroom exception describes (an unsupported
    parameter, a content policy refusal, a timeout); rendered as is by ``openai_error``."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind


def unsupported(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, message, code="unsupported_parameter", param=param)


class ImageParams(BaseModel):
    """The parameters of a generations or edits call, by type. Absent and null are the same:
    the default. Unknown names are refused (``extra_forbidden``: OpenAI's unknown_parameter)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # mapped (map_call checks the values)
    model: str | None = None
    prompt: Any = None  # the model's to check (length, blank)
    n: int | None = None
    size: str | None = None
    response_format: str | None = None
    output_format: str | None = None
    background: str | None = None
    moderation: str | None = None
    stream: bool | None = None
    mask: Any = None  # refused when given
    markup: Any = None  # refused when given
    # accepted and ignored (OpenAI's own; darkroom has no use for them)
    quality: str | None = None
    style: str | None = None
    user: str | None = None
    safety_identifier: str | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    partial_images: int | None = Field(None, ge=0, le=3)
    complexity: str | None = None
    input_fidelity: str | None = None
    frame_count: int | None = Field(None, ge=2, le=16)
    frame_duration_ms: int | None = Field(None, ge=0, le=655350)
    svg: dict[str, Any] | None = None
    # darkroom's payload fields (the model's to check)
    seed: Any = None
    steps: Any = None
    guidance: Any = None
    safety_tolerance: Any = None
    prompt_upsampling: Any = None
    aspect_ratio: Any = None


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


#: The OpenAPI properties of the parameters darkroom reads itself, as ``ImageParams`` and
#: ``map_call`` check them (the model's fields are added per model).
_MAPPED_SCHEMA: dict[str, dict[str, Any]] = {
    "n": _nullable({"type": "integer", "minimum": 1, "maximum": MAX_N,
                    "description": f"1 to {MAX_N} images, each its own request (default 1)."}),
    "size": _nullable({"type": "string", "pattern": "^(auto|[1-9][0-9]{0,4}[xX][1-9][0-9]{0,4})$",
                       "description": "auto, or WIDTHxHEIGHT: the nearest aspect ratio at about 1 megapixel."}),
    "response_format": _nullable({"enum": list(RESPONSE_FORMATS), "description": "Default b64_json."}),
    "output_format": _nullable({"enum": list(OUTPUT_FORMATS), "description": "Default png (jpg is jpeg)."}),
    "background": _nullable({"enum": ["auto", "opaque"], "description": "transparent is not supported."}),
    "moderation": _nullable({"enum": ["auto", "low"],
                             "description": "low: safety_tolerance 4 unless given; auto: the model's default."}),
    "stream": _nullable({"const": False, "description": "Streaming is not supported."}),
}
#: OpenAI's parameters that darkroom accepts and ignores, by type (integers in OpenAI's ranges).
_IGNORED_SCHEMA: dict[str, dict[str, Any]] = {
    **{name: _nullable({"type": "string", "description": "Accepted and ignored."})
       for name in ("quality", "style", "user", "safety_identifier", "complexity", "input_fidelity")},
    **{name: _nullable({"type": "integer", "minimum": low, "maximum": high, "description": "Accepted and ignored."})
       for name, (low, high) in {"output_compression": (0, 100), "partial_images": (0, 3), "frame_count": (2, 16),
                                 "frame_duration_ms": (0, 655350)}.items()},
    "svg": _nullable({"type": "object", "description": "Accepted and ignored."}),
}
GENERATION_SCHEMA: dict[str, dict[str, Any]] = {**_MAPPED_SCHEMA, **_IGNORED_SCHEMA}
#: An edit's fields are multipart text parts: never null, and no objects (svg).
EDIT_SCHEMA: dict[str, dict[str, Any]] = {name: schema["anyOf"][0] for name, schema in GENERATION_SCHEMA.items()
                                          if name != "svg"}


@dataclass(frozen=True)
class Call:
    """One generations/edits call, mapped: the model, ``n`` payloads and how to answer."""

    model: str
    payloads: list[dict[str, Any]]
    response_format: str
    output_format: str


def map_call(service: Service, params: dict[str, Any], images: list[bytes] | None = None) -> Call:
    """The darkroom requests an OpenAI call asks for. ``params`` have passed ``ImageParams``
    (absent ones are left out); ``images`` are an edit's inputs.

    Raises OpenAIError, InvalidField (a type the wire allows but darkroom does not) or
    ModelNotFound; everything else about the payload is the service's to validate.
    """
    params = {k: v for k, v in params.items() if v is not None}  # null is the default, as absent
    if "prompt" not in params:
        raise OpenAIError(400, "Missing required parameter: 'prompt'.", code="missing_required_parameter",
                          param="prompt")
    if params.get("stream"):
        raise unsupported("stream", "Streaming is not supported by this server; omit 'stream'.")
    for name in ("mask", "markup"):
        if name in params:
            raise unsupported(name, f"'{name}' is not supported: darkroom edits the whole image from the prompt.")
    if params.get("background", "auto") not in ("auto", "opaque"):
        raise unsupported("background", "Transparent backgrounds are not supported; use 'auto' or 'opaque'.")

    model = params.get("model", service.registry.default)
    if model is None:
        raise OpenAIError(400, "you must provide a model parameter", code="missing_required_parameter",
                          param="model")
    spec = service.registry.get(model)
    if images is not None and not spec.editing:
        raise OpenAIError(400, f"Model '{model}' does not edit images; use an image-editing model.",
                          code="invalid_value", param="model")

    n = params.get("n", 1)
    if not 1 <= n <= MAX_N:
        raise OpenAIError(400, f"'n' must be an integer from 1 to {MAX_N}.", code="invalid_value", param="n")
    response_format = params.get("response_format", "b64_json")
    if response_format not in RESPONSE_FORMATS:
        raise OpenAIError(400, "response_format must be 'url' or 'b64_json'.", code="invalid_value",
                          param="response_format")
    output_format = params.get("output_format", "png")
    if output_format not in OUTPUT_FORMATS:
        raise unsupported("output_format", f"output_format '{output_format}' is not supported; use 'png' or 'jpeg'.")
    output_format = "jpeg" if output_format == "jpg" else output_format

    payload: dict[str, Any] = {k: params[k] for k in EXTENSIONS if k in params and k != "seed"}
    payload["prompt"] = params["prompt"]
    payload["output_format"] = output_format
    ratio = _ratio_for(params.get("size"), images)  # checked even where aspect_ratio wins
    if ratio and "aspect_ratio" not in payload:
        payload["aspect_ratio"] = ratio
    moderation = params.get("moderation", "auto")
    if moderation not in ("auto", "low"):
        raise OpenAIError(400, "moderation must be 'auto' or 'low'.", code="invalid_value", param="moderation")
    if moderation == "low":
        payload.setdefault("safety_tolerance", LOW_MODERATION_TOLERANCE)
    if images is not None and len(images) > len(INPUT_IMAGE_FIELDS):
        raise OpenAIError(400, f"At most {len(INPUT_IMAGE_FIELDS)} images can be given.", code="invalid_value",
                          param="image")
    for field, image in zip(INPUT_IMAGE_FIELDS, images or []):
        payload[field] = base64.b64encode(image).decode()

    seed = params.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidField("seed", "must be an integer")
    # Seed 0 lets each request draw its own random seed; a given seed s makes s, s+1, ...
    payloads = [{**payload, "seed": _nth_seed(seed, i)} for i in range(n)]
    return Call(spec.id, payloads, response_format, output_format)


def _nth_seed(seed: int, i: int) -> int:
    if seed <= 0 or seed > MAX_SEED:
        return seed  # 0 (random) as is; out of range is the service's to refuse
    return (seed - 1 + i) % MAX_SEED + 1


def _ratio_for(size: str | None, images: list[bytes] | None) -> str | None:
    """``"WxH"`` -> the nearest aspect ratio; ``auto`` (or none) -> the first input image's, or 1:1."""
    if size in (None, "auto"):
        if images:
            try:
                from PIL import Image

                with Image.open(io.BytesIO(images[0])) as im:  # reads the header only
                    return nearest_ratio(*im.size)
            except Exception:
                return None  # unreadable: the service says so, naming the image
        return None
    match = _SIZE_RE.fullmatch(size)
    if match is None:
        raise OpenAIError(400, f"Invalid size '{size}': use 'auto' or 'WIDTHxHEIGHT', e.g. '1024x1024'.",
                          code="invalid_value", param="size")
    return nearest_ratio(int(match.group(1)), int(match.group(2)))


async def form_params(request: Request) -> tuple[dict[str, Any], list[bytes]]:
    """An edit's multipart fields (numbers and booleans parsed) and its images, in order."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaType(f"send images/edits as multipart/form-data, not {content_type or 'no type'}")
    try:
        form = await request.form(max_files=16, max_fields=64)
    except (AssertionError, ValueError, KeyError) as exc:  # python-multipart's and starlette's parse errors
        raise OpenAIError(400, f"The multipart body could not be read: {exc}", code="invalid_value") from exc
    params: dict[str, Any] = {}
    images: list[bytes] = []
    for name, value in form.multi_items():
        base = name.split("[", 1)[0]  # image, image[], image[0]; svg[model]
        if base == "image":
            if not isinstance(value, UploadFile):
                raise OpenAIError(400, "'image' must be a file.", code="invalid_value", param="image")
            images.append(await value.read())
            continue
        if isinstance(value, UploadFile):
            params[base] = True  # mask or markup: present (and refused); other files are unknown
            continue
        params[base] = _form_value(base, value)
    if not images:
        raise OpenAIError(400, "Missing required parameter: 'image'.", code="missing_required_parameter",
                          param="image")
    return params, images


def _form_value(name: str, value: str) -> Any:
    if name in FORM_INTS:
        try:
            return int(value)
        except ValueError:
            raise OpenAIError(400, f"'{name}' must be an integer.", code="invalid_value", param=name) from None
    if name == "guidance":
        try:
            return float(value)
        except ValueError:
            raise OpenAIError(400, "'guidance' must be a number.", code="invalid_value", param=name) from None
    if name in ("prompt_upsampling", "stream"):
        if value.strip().lower() not in ("true", "false"):
            raise OpenAIError(400, f"'{name}' must be true or false.", code="invalid_value", param=name)
        return value.strip().lower() == "true"
    return value
