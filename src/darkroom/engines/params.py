"""Payload parameters: the one source of truth for validation, model info and docs.

A model's parameter list is the standard FLUX Kontext payload (see the contract) shaped by its
pipeline family (``families.py``: guidance and steps, how many input images) with per-model
defaults and ranges from the registry file. ``validate_payload`` checks a
request against it; ``ParamSpec.to_record`` renders it for model info; ``json_schema``
renders it for the OpenAPI document.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass, replace
from typing import Any, Literal

from darkroom.engines.families import MAX_INPUT_IMAGES, Family, input_image_fields
from darkroom.errors import InvalidField, PayloadTooLarge

ParamType = Literal["string", "integer", "number", "boolean", "image", "aspect_ratio"]

_ASPECT_RE = re.compile(r"^\s*(\d{1,5})\s*:\s*(\d{1,5})\s*$")
MIN_ASPECT = 3 / 7
MAX_ASPECT = 7 / 3
ASPECT_OPTIONS = ("1:1", "16:9", "9:16", "4:3", "3:7", "7:3")


@dataclass(frozen=True)
class ParamSpec:
    """One payload field: its type, default and constraints."""

    name: str
    type: ParamType
    description: str
    required: bool = False
    default: Any = None
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    choices: tuple[Any, ...] | None = None
    # The default when the request edits (has an input image), where it differs: darkroom-mini's
    # true CFG helps text-to-image but pulls edits away from the source (docs/darkroom-mini.md).
    edit_default: Any = None

    def default_for(self, editing: bool) -> Any:
        return self.edit_default if editing and self.edit_default is not None else self.default

    def constraints(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.min_length is not None:
            out["min_length"] = self.min_length
        if self.max_length is not None:
            out["max_length"] = self.max_length
        if self.choices is not None:
            out["options"] = list(self.choices)
        if self.type == "aspect_ratio":
            out["range"] = "3:7 to 7:3"
        if self.nullable:
            out["nullable"] = True
        return out

    def to_record(self) -> dict[str, Any]:
        """The entry in model info's ``parameters`` list."""
        return {
            "name": self.name,
            "type": _WIRE_TYPES[self.type],
            "required": self.required,
            "default": self.default,
            "description": self.description,
            "constraints": self.constraints(),
        } | ({"edit_default": self.edit_default} if self.edit_default is not None else {})

    def json_schema(self) -> dict[str, Any]:
        """A JSON Schema fragment for the OpenAPI document."""
        t = _JSON_TYPES[self.type]
        schema: dict[str, Any] = {"type": [t, "null"] if self.nullable else t, "description": self.description}
        if not self.required:
            schema["default"] = self.default
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.min_length is not None:
            schema["minLength"] = self.min_length
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
        if self.choices is not None:
            schema["enum"] = list(self.choices) + ([None] if self.nullable else [])
        if self.type == "aspect_ratio":
            schema["pattern"] = _ASPECT_RE.pattern
            schema["examples"] = list(ASPECT_OPTIONS)
        return schema


_WIRE_TYPES = {
    "string": "string",
    "integer": "integer",
    "number": "float",
    "boolean": "boolean",
    "image": "string",
    "aspect_ratio": "string",
}
_JSON_TYPES = {
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "image": "string",
    "aspect_ratio": "string",
}

#: Every input-image field any model may take (``input_image`` .. ``input_image_8``); a model's own
#: parameters list the ones it takes (``Family.max_input_images``).
INPUT_IMAGE_FIELDS = input_image_fields(MAX_INPUT_IMAGES)
_INPUT_IMAGE_RE = re.compile(r"^input_image(_[0-9]+)?$")


def standard_params(family: Family) -> list[ParamSpec]:
    """The contract's payload (FLUX Kontext Pro's fields) for a model of ``family``, before
    per-model overrides: guidance and steps defaults and ranges from the family, and as many
    input-image fields as the family takes (none for text-only families)."""
    params = [
        ParamSpec("prompt", "string", "Text description of the desired image.", required=True,
                  min_length=1, max_length=2000),
        ParamSpec("aspect_ratio", "aspect_ratio",
                  "Aspect ratio W:H between 3:7 and 7:3; about 1 megapixel out. null lets the system choose (1:1).",
                  default="1:1", nullable=True),
        ParamSpec("seed", "integer", "Random seed for reproducible results; 0 picks one at random and reports it.",
                  default=0, minimum=0, maximum=2147483647),
        ParamSpec("prompt_upsampling", "boolean", "Rewrite and enrich the prompt before generating.", default=False),
        ParamSpec("safety_tolerance", "integer",
                  "Moderation level for inputs and outputs: 0 is the strictest, 6 the most permissive.",
                  default=2, minimum=0, maximum=6),
        ParamSpec("output_format", "string", "Format of the output image.", default="jpeg", choices=("jpeg", "png")),
        ParamSpec("guidance", "number", family.guidance_description(), default=family.guidance.default,
                  minimum=family.guidance.minimum, maximum=family.guidance.maximum),
        ParamSpec("steps", "integer", "Number of denoising steps.", default=int(family.steps.default),
                  minimum=family.steps.minimum, maximum=family.steps.maximum),
    ]
    for i, name in enumerate(input_image_fields(family.max_input_images), start=1):
        if i == 1:
            what = ("Image to edit (required)" if family.needs_image else "Image to edit")
            params.append(ParamSpec(name, "image", f"{what}: base64 (optionally a data: URL) or an http(s) URL; "
                                                   "at most 20 MB.",
                                    required=family.needs_image, default=None, nullable=not family.needs_image))
        else:
            how = " (joined side by side with the others)" if family.stitch_references else ""
            params.append(ParamSpec(name, "image", f"Extra reference image {i}{how}; same rules as input_image.",
                                    default=None, nullable=True))
    return params


def input_fields_of(params: list[ParamSpec]) -> tuple[str, ...]:
    """The input-image fields a model's parameters list, in order."""
    return tuple(p.name for p in params if p.type == "image")


def apply_overrides(params: list[ParamSpec], overrides: dict[str, dict[str, Any]]) -> list[ParamSpec]:
    """Per-model defaults and ranges from the registry file (``[models.X.parameters]``)."""
    by_name = {p.name: p for p in params}
    for name, fields in overrides.items():
        if name not in by_name:
            raise ValueError(f"unknown parameter {name!r} in model registry")
        if "choices" in fields:
            fields = {**fields, "choices": tuple(fields["choices"])}
        by_name[name] = replace(by_name[name], **fields)
    return [by_name[p.name] for p in params]


def parse_aspect_ratio(value: str, field: str = "payload.aspect_ratio") -> tuple[int, int]:
    m = _ASPECT_RE.match(value)
    if not m:
        raise InvalidField(field, f"must look like 'W:H' (for example '16:9'), got {value!r}")
    w, h = int(m.group(1)), int(m.group(2))
    if w == 0 or h == 0:
        raise InvalidField(field, "both sides of the ratio must be positive")
    ratio = w / h
    if ratio < MIN_ASPECT - 1e-9 or ratio > MAX_ASPECT + 1e-9:
        raise InvalidField(field, f"{value!r} is outside the supported range 3:7 to 7:3")
    return w, h


def decode_base64_image(value: str, field: str, max_bytes: int) -> bytes:
    """Bytes of a base64 (or ``data:`` URL) image; raises InvalidField if it is not one."""
    data = value
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    # base64 is 4/3 the size of what it encodes: refuse before decoding a huge string.
    if len(data) * 3 // 4 > max_bytes:
        raise PayloadTooLarge(f"{field}: image is larger than {max_bytes // (1024 * 1024)} MB", field=field)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidField(field, "must be a base64-encoded image or an http(s) URL",
                           code="invalid_input_image") from exc
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"{field}: image is larger than {max_bytes // (1024 * 1024)} MB", field=field)
    return raw


def _check_type(spec: ParamSpec, value: Any, field: str) -> None:
    t = spec.type
    # bool is an int in Python; the wire types keep them apart.
    if t == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidField(field, f"must be an integer, got {type(value).__name__}")
    elif t == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidField(field, f"must be a number, got {type(value).__name__}")
    elif t == "boolean":
        if not isinstance(value, bool):
            raise InvalidField(field, f"must be true or false, got {type(value).__name__}")
    elif t in ("string", "image", "aspect_ratio"):
        if not isinstance(value, str):
            raise InvalidField(field, f"must be a string, got {type(value).__name__}")


def _number(value: float) -> str:
    """A bound as people write it: 2147483647, not 2.14748e+09; 0.5 stays 0.5."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def validate_payload(params: list[ParamSpec], payload: Any, *, max_image_bytes: int) -> dict[str, Any]:
    """Check a payload against a model's parameters and fill in defaults.

    Returns a new dict holding every parameter. Raises InvalidField naming the first bad
    field (``payload.<name>``). Input images are checked to be decodable base64 or an
    http(s) URL; whether they are real images is checked by ``darkroom.imaging``.
    """
    if not isinstance(payload, dict):
        raise InvalidField("payload", "must be a JSON object")
    known = {p.name: p for p in params}
    for name in payload:
        if name not in known:
            raise InvalidField(f"payload.{name}", _unknown_field(name, params))
    out: dict[str, Any] = {}
    editing = any(payload.get(name) for name in input_fields_of(params))
    for spec in params:
        field = f"payload.{spec.name}"
        if spec.name not in payload:
            if spec.required:
                raise InvalidField(field, "is required")
            out[spec.name] = spec.default_for(editing)
            continue
        value = payload[spec.name]
        if value is None:
            if spec.nullable:
                out[spec.name] = None
                continue
            raise InvalidField(field, "must not be null")
        _check_type(spec, value, field)
        if spec.type == "number":
            value = float(value)
        if spec.minimum is not None and spec.minimum == spec.maximum and value != spec.minimum:
            raise InvalidField(field, f"this model accepts only {_number(spec.minimum)}, got {value}")
        if spec.minimum is not None and value < spec.minimum:
            raise InvalidField(field, f"must be at least {_number(spec.minimum)}, got {value}")
        if spec.maximum is not None and value > spec.maximum:
            raise InvalidField(field, f"must be at most {_number(spec.maximum)}, got {value}")
        if spec.min_length is not None and len(value) < spec.min_length:
            raise InvalidField(field, f"must be at least {spec.min_length} characters")
        if spec.max_length is not None and len(value) > spec.max_length:
            raise InvalidField(field, f"must be at most {spec.max_length} characters, got {len(value)}")
        if spec.choices is not None and value not in spec.choices:
            raise InvalidField(field, f"must be one of {', '.join(map(str, spec.choices))}, got {value!r}")
        if spec.type == "aspect_ratio":
            parse_aspect_ratio(value, field)
        if spec.type == "image" and not value.startswith(("http://", "https://")):
            decode_base64_image(value, field, max_image_bytes)
        out[spec.name] = value
    if spec_named(params, "prompt") and isinstance(out.get("prompt"), str) and not out["prompt"].strip():
        raise InvalidField("payload.prompt", "must not be blank")
    return out


def _unknown_field(name: str, params: list[ParamSpec]) -> str:
    """Why ``name`` is refused: an input image beyond what the model takes says so."""
    if _INPUT_IMAGE_RE.match(name):
        count = len(input_fields_of(params))
        if count == 0:
            return "this model makes images from text only; it takes no input image"
        return f"this model takes at most {count} input image{'s' if count > 1 else ''}"
    return f"unknown field; this model accepts: {', '.join(p.name for p in params)}"


def spec_named(params: list[ParamSpec], name: str) -> ParamSpec | None:
    return next((p for p in params if p.name == name), None)
