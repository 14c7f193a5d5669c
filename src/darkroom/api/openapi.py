"""The OpenAPI document: FastAPI's, completed from the model registry so that every operation
states exactly what it takes and what it answers.

FastAPI writes what the routes declare (paths, parameters, the error responses of each, the
answers' models). What depends on the registry, or on what a handler reads itself, is added
here from the same sources that validate requests:

- ``Payload_<model>``: each model's payload, from its parameter specs (``engines/params.py``)
  plus the request-level fields the service also takes from a payload (priority, webhook_url,
  webhook_secret);
- the request-queue submit body: one variant per model name (an id or an alias),
  discriminated by ``model``;
- the BFL dialect: ``POST /v1/<name>`` for every model id and alias, each with that model's
  body (the FLUX.2 names with BFL's safety_tolerance range); ``POST /v1/{model}`` stays for
  every other name (all 404);
- the OpenAI dialect: the generations (JSON) and edits (multipart) bodies, one variant per
  model, with darkroom's payload fields as extensions;
- links from each submit to what reads its request (status, cancel, events, get_result);
- media's ``exp`` and ``sig``, which every signed URL carries.

Two string formats say what no pattern can: ``aspect-ratio`` (``W:H`` from 3:7 to 7:3) and
``image`` (base64, a ``data:`` URL or an http(s) URL of a real image); ``uri`` on webhook
URLs, which must also reach a public host. A fuzzer needs values for each that the server
accepts (tests/api/fuzz_hooks.py narrows them to such values).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from darkroom.api.bfl import (
    FLUX2_MAX_SAFETY_TOLERANCE,
    FLUX2_ROUTES,
    MAX_SIDE,
    RESERVED,
)
from darkroom.api.openai_params import EDIT_SCHEMA, EXTENSIONS, GENERATION_SCHEMA
from darkroom.engines.params import ParamSpec
from darkroom.engines.registry import ModelSpec, Registry
from darkroom.service import Service

# What Python's str.strip() and str.isspace() call whitespace (the service strips with them),
# spelled out: \s differs between Python, ECMAScript and Rust regular expressions.
_SPACE = "\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
NOT_BLANK = f"[^{_SPACE}]"
_PRIORITY = "([Hh][Ii][Gg][Hh]|[Nn][Oo][Rr][Mm][Aa][Ll]|[Ll][Oo][Ww])"
ASPECT_RATIO_PATTERN = f"^[{_SPACE}]*[0-9]{{1,5}}[{_SPACE}]*:[{_SPACE}]*[0-9]{{1,5}}[{_SPACE}]*$"

#: JSON Schema formats darkroom defines (see the module docstring).
ASPECT_RATIO_FORMAT = "aspect-ratio"
IMAGE_FORMAT = "image"

_REF = "#/components/schemas/"


def install(app: FastAPI, service: Service) -> None:
    """Serve ``document`` as the app's /openapi.json."""
    app.openapi = lambda: document(app, service)  # type: ignore[method-assign]


def document(app: FastAPI, service: Service) -> dict[str, Any]:
    """The app's OpenAPI document, built once (the registry is fixed for the process)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    ops = {op["operationId"]: op for item in schema["paths"].values() for op in item.values()
           if isinstance(op, dict) and "operationId" in op}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    registry = service.registry
    for spec in registry.models.values():
        components[_name("Payload", spec.id)] = payload_schema(spec)
    _submit_body(ops["submit_request"], registry, components)
    _bfl_routes(schema["paths"], ops["bfl_submit"], registry, components)
    _openai_bodies(ops["openai_create_images"], ops["openai_edit_images"], registry, components)
    _request_headers(schema["paths"])
    _media_parameters(ops["get_media"])
    schema["paths"]["/healthz"]["get"]["responses"].update(
        {"503": {"description": "The database is unreachable (store_unavailable).",
                 "content": {"application/json": {"schema": {"$ref": _REF + "ErrorResponse"}}}}})
    _links(ops, schema["paths"])
    _drop_fastapi_422(schema)
    app.openapi_schema = schema
    return schema


def _name(prefix: str, model_id: str) -> str:
    return f"{prefix}_" + re.sub(r"[^A-Za-z0-9]", "_", model_id)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def param_schema(param: ParamSpec) -> dict[str, Any]:
    """A payload field's JSON Schema: ``ParamSpec.json_schema`` made exact where a type alone
    is not (a prompt must not be blank; aspect ratios and images have formats)."""
    schema = param.json_schema()
    if param.name == "prompt":
        schema["pattern"] = NOT_BLANK
    if param.type == "aspect_ratio":
        schema["pattern"] = ASPECT_RATIO_PATTERN
        schema["format"] = ASPECT_RATIO_FORMAT
    if param.type == "image":
        schema["format"] = IMAGE_FORMAT
    return schema


def _webhook_url(max_length: int | None = None) -> dict[str, Any]:
    """A webhook URL: an http(s) URL of a public host (or one the operator allow-listed); ""
    and null set none."""
    url: dict[str, Any] = {"type": "string", "format": "uri", "pattern": "^https?://"}
    if max_length is not None:
        url["maxLength"] = max_length
    return {"anyOf": [url, {"type": "string", "maxLength": 0}, {"type": "null"}],
            "description": "Called when the request ends (docs/webhooks.md)."}


#: The request-level fields the service also takes from a payload (the BFL dialect's place for them).
ENVELOPE: dict[str, dict[str, Any]] = {
    "priority": {"type": "string", "pattern": f"^[{_SPACE}]*{_PRIORITY}[{_SPACE}]*$",
                 "description": "high, normal or low (any case); high needs the operator's grant."},
    "webhook_url": _webhook_url(),
    "webhook_secret": {"type": ["string", "null"], "description": "Signs the webhook deliveries."},
}


def payload_schema(spec: ModelSpec) -> dict[str, Any]:
    """A model's payload: its parameters, nothing else (``additionalProperties: false``)."""
    return {
        "title": f"Payload for {spec.id}",
        "type": "object",
        "additionalProperties": False,
        "required": [p.name for p in spec.parameters if p.required],
        "properties": {**{p.name: param_schema(p) for p in spec.parameters}, **copy.deepcopy(ENVELOPE)},
    }


def _names(spec: ModelSpec) -> list[str]:
    return [spec.id, *spec.aliases]


def _json_body(ref: str, description: str) -> dict[str, Any]:
    return {"required": True, "description": description,
            "content": {"application/json": {"schema": {"$ref": _REF + ref}}}}


def _submit_body(op: dict[str, Any], registry: Registry, components: dict[str, Any]) -> None:
    """The request-queue submit body: a variant per model name (an id or an alias), each with
    its model's payload, discriminated by ``model`` (one name, one variant)."""
    variants, mapping = [], {}
    for spec in registry.models.values():
        for model_name in _names(spec):
            name = _name("Submit", model_name)
            components[name] = {
                "title": f"Submit to {model_name}" + (f" ({spec.id})" if model_name != spec.id else ""),
                "type": "object",
                "additionalProperties": False,
                "required": ["model", "payload"],
                "properties": {
                    "model": {"type": "string", "enum": [model_name]},
                    "payload": {"$ref": _REF + _name("Payload", spec.id)},
                    "webhook_url": _webhook_url(2048),
                    "webhook_secret": {"type": ["string", "null"], "maxLength": 512,
                                       "description": "Signs webhook deliveries (HMAC-SHA256)."},
                    "priority": {"enum": ["high", "normal", "low", None],
                                 "description": "Queue priority (also the X-Priority header); high needs the grant."},
                },
            }
            variants.append({"$ref": _REF + name})
            mapping[model_name] = _REF + name
    components["SubmitBody"] = {"oneOf": variants, "discriminator": {"propertyName": "model", "mapping": mapping}}
    op["requestBody"] = _json_body("SubmitBody", "The model and its payload (Payload_<model>).")


def _bfl_routes(paths: dict[str, Any], generic: dict[str, Any], registry: Registry,
                components: dict[str, Any]) -> None:
    """``POST /v1/<name>`` for every served name, with its model's body; the generic route for the rest."""
    served = [(name, spec) for spec in registry.models.values() for name in _names(spec) if name not in RESERVED]
    for name, spec in served:
        flux2 = name in FLUX2_ROUTES
        body = _name("BflBody", spec.id) + ("_flux2" if flux2 else "")
        if body not in components:
            components[body] = _bfl_body(spec, flux2)
        op = copy.deepcopy(generic)
        op["parameters"] = [p for p in op.get("parameters", []) if p.get("name") != "model"]
        op["operationId"] = _name("bfl_submit", name)
        op["summary"] = f"Submit a task to {name}" + (f" ({spec.id})" if name != spec.id else "")
        op["requestBody"] = _json_body(body, "The payload fields at top level (BFL's request body).")
        for status in ("404", "405"):  # the name is a served model's
            op["responses"].pop(status, None)
        paths[f"/v1/{name}"] = {"post": op}
    # Every other name: a model this server does not have.
    for param in generic.get("parameters", []):
        if param.get("name") == "model":
            param["schema"] = {"type": "string", "not": {"enum": [n for n, _ in served] + list(RESERVED)},
                               "description": "A name no model here answers to."}
    generic["summary"] = "Submit a task to a name no model answers to (404; each model has its own route)"
    generic["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
    for status in ("409", "429"):
        generic["responses"].pop(status, None)


def _bfl_body(spec: ModelSpec, flux2: bool) -> dict[str, Any]:
    """BFL's body for a model: the payload at top level, and BFL's width and height."""
    body = payload_schema(spec)
    body["title"] = f"BFL body for {spec.id}" + (" on a FLUX.2 route" if flux2 else "")
    tolerance = body["properties"].get("safety_tolerance")
    if flux2 and tolerance is not None and tolerance.get("maximum", 6) > FLUX2_MAX_SAFETY_TOLERANCE:
        tolerance["maximum"] = FLUX2_MAX_SAFETY_TOLERANCE
    side = {"type": "integer", "minimum": 1, "maximum": MAX_SIDE}
    body["properties"]["width"] = {**side, "description": "With height: the nearest aspect ratio (if none is given)."}
    body["properties"]["height"] = {**side, "description": "With width."}
    body["dependentRequired"] = {"width": ["height"], "height": ["width"]}
    return body


def _openai_bodies(generations: dict[str, Any], edits: dict[str, Any], registry: Registry,
                   components: dict[str, Any]) -> None:
    """One body variant per model for generations (JSON) and per editing model for edits (multipart)."""
    default = registry.default
    gen_variants = []
    for spec in registry.models.values():
        params = {p.name: p for p in spec.parameters}
        names: list[Any] = _names(spec)
        optional_model = spec.id == default  # no model: the default one
        model = {"enum": names + ([None] if optional_model else []), "description": "The model id or an alias."}
        extensions = {n: param_schema(params[n]) for n in EXTENSIONS if n in params}
        name = _name("OpenAIGenerate", spec.id)
        components[name] = {
            "title": f"Generate with {spec.id}",
            "type": "object",
            "additionalProperties": False,
            "required": ["prompt"] + ([] if optional_model else ["model"]),
            "properties": {"model": model, "prompt": param_schema(params["prompt"]),
                           **copy.deepcopy(GENERATION_SCHEMA), **{n: _nullable(s) for n, s in extensions.items()}},
        }
        gen_variants.append({"$ref": _REF + name})
    components["OpenAIGenerateBody"] = {"oneOf": gen_variants}
    generations["requestBody"] = _json_body("OpenAIGenerateBody", "OpenAI's parameters, and darkroom's payload "
                                                                  "fields as extensions (docs/dialects.md).")
    editing = [spec for spec in registry.models.values() if spec.input_image_fields]
    if editing:
        components["OpenAIEditBody"] = _edit_body(editing, default)
        edits["requestBody"] = {"required": True, "content": {"multipart/form-data": {
            "schema": {"$ref": _REF + "OpenAIEditBody"}, "encoding": {"image": {"contentType": "image/*"}}}}}


def _edit_body(editing: list[ModelSpec], default: str | None) -> dict[str, Any]:
    """The edits body, one object (fuzzers and code generators read a multipart body's parts
    from its top-level properties): the fields on which the editing models agree at the top,
    and a variant per model for those on which they do not (``image``'s count, a range)."""
    per_model: dict[str, dict[str, dict[str, Any]]] = {}  # model id -> field -> schema
    for spec in editing:
        params = {p.name: p for p in spec.parameters}
        images = len(spec.input_image_fields)
        per_model[spec.id] = {
            "image": {"type": "array", "minItems": 1, "maxItems": images,
                      "items": {"type": "string", "format": "binary", "contentMediaType": "image/*"},
                      "description": f"1 to {images} images (input_image, input_image_2, ...)."},
            "prompt": param_schema(params["prompt"]),
            **{n: _not_null(param_schema(params[n])) for n in EXTENSIONS if n in params},
        }
    fields = sorted({f for schemas in per_model.values() for f in schemas})
    agreed = {f for f in fields if all(schemas.get(f) == per_model[editing[0].id].get(f)
                                       for schemas in per_model.values())}
    names = [n for spec in editing for n in _names(spec)]
    optional_model = default in per_model
    body: dict[str, Any] = {
        "title": "Edit (multipart)",
        "type": "object",
        "additionalProperties": False,
        "required": ["image", "prompt"] + ([] if optional_model else ["model"]),
        "properties": {
            "model": {"type": "string", "enum": names, "description": "An image-editing model's id or alias."},
            **{f: _loosest(f, [schemas[f] for schemas in per_model.values() if f in schemas]) for f in fields},
            **copy.deepcopy(EDIT_SCHEMA),
        },
    }
    if agreed != set(fields):
        body["oneOf"] = [
            {"properties": {"model": {"enum": _names(spec)}, **{f: s for f, s in per_model[spec.id].items()
                                                                  if f not in agreed}},
             "required": [] if spec.id == default else ["model"]}
            for spec in editing
        ]
    return body


def _loosest(field: str, schemas: list[dict[str, Any]]) -> dict[str, Any]:
    """The top-level schema of a field the editing models may disagree on: theirs if they
    agree; else for ``image`` the largest count (still a file part), for others anything."""
    if all(s == schemas[0] for s in schemas):
        return schemas[0]
    if field == "image":
        return max(schemas, key=lambda s: s["maxItems"])
    return {}


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A nullable field as a multipart text part, which cannot be null."""
    out = dict(schema)
    if isinstance(out.get("type"), list):
        out["type"] = next(t for t in out["type"] if t != "null")
    if "enum" in out:
        out["enum"] = [v for v in out["enum"] if v is not None]
    out.pop("default", None)
    return out


def _request_headers(paths: dict[str, Any]) -> None:
    """The request-level headers every submit reads (``deps.submit_options``), as it checks them."""
    schemas = {
        "Idempotency-Key": {"type": "string", "maxLength": 255, "pattern": NOT_BLANK},
        "X-Priority": {"type": "string", "pattern": f"^$|^[{_SPACE}]*{_PRIORITY}[{_SPACE}]*$"},
    }
    for op in (op for item in paths.values() for op in item.values()):
        for param in op.get("parameters", []):
            if param.get("in") == "header" and param.get("name") in schemas:
                param["schema"] = {**schemas[param["name"]], "description": param.get("description", "")}


def _media_parameters(op: dict[str, Any]) -> None:
    """``exp`` and ``sig`` are in every signed URL; a URL without them is not signed (403)."""
    for param in op.get("parameters", []):
        if param["name"] == "exp":
            param["required"] = True
            param["schema"] = {"type": "integer", "minimum": 0}
        elif param["name"] == "sig":
            param["required"] = True
            param["schema"] = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
        elif param["name"] == "step":
            param["schema"] = {"type": "string"}  # not checked: any value serves the image


def _links(ops: dict[str, Any], paths: dict[str, Any]) -> None:
    """From each submit to the operations that read what it made."""
    request_id = {"request_id": "$response.body#/request_id"}
    ops["submit_request"]["responses"]["200"]["links"] = {
        "GetRequest": {"operationId": "get_request", "parameters": request_id},
        "CancelRequest": {"operationId": "cancel_request", "parameters": request_id},
        "RequestEvents": {"operationId": "request_events", "parameters": request_id},
    }
    result = {"GetResult": {"operationId": "bfl_get_result", "parameters": {"id": "$response.body#/id"}}}
    for path, item in paths.items():
        post = item.get("post", {})
        if path.startswith("/v1/") and post.get("operationId", "").startswith("bfl_submit"):
            post["responses"]["200"]["links"] = copy.deepcopy(result)


def _drop_fastapi_422(schema: dict[str, Any]) -> None:
    """FastAPI documents a 422 in its own shape on every route with parameters; the routes
    declare their own 422 (in their dialect's shape) where one can happen, so the rest go."""
    for item in schema["paths"].values():
        for op in item.values():
            responses = op.get("responses", {})
            body = responses.get("422", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if body.get("$ref", "").endswith("/HTTPValidationError"):
                del responses["422"]
    components = schema["components"]["schemas"]
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)

