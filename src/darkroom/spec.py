"""The generation spec: what a request asks of the engine, fixed at submit time.

The service turns a validated payload into a ``GenerationSpec`` once, when the request
is queued, and the store keeps it beside the payload. Every worker stage reads the spec,
never the payload, so what "a request" means is written down in one typed place, and a
retry on another worker makes the same image: a random seed is drawn at submit, not at
run time.

``shape_key`` is what must be equal for two requests to share one pipeline call (the
batch): the model and every field that changes the call's tensor shapes or its
sampling loop. The prompt, seed, output format, tolerance and upsampling do not: they
are per image. The store indexes the key, so a claim can pick a batch with one query.
"""

from __future__ import annotations

import secrets
from typing import Any

from darkroom.domain import GenerationSpec, InputRef
from darkroom.engines.params import INPUT_IMAGE_FIELDS, parse_aspect_ratio
from darkroom.imaging import size_for_aspect

__all__ = ["GenerationSpec", "InputRef", "MAX_SEED", "build_spec"]

MAX_SEED = 2147483647


def build_spec(model: str, payload: dict[str, Any], *, image_sizes: dict[str, tuple[int, int]] | None = None,
               seed: int | None = None) -> GenerationSpec:
    """The spec of a validated payload (every parameter present, defaults filled in).

    ``image_sizes``: the decoded size of each uploaded input image, by field. ``seed``
    overrides the draw of a random seed (tests; the payload's own seed always wins).
    """
    image_sizes = image_sizes or {}
    asked = int(payload.get("seed") or 0)
    width, height = size_for_aspect(*parse_aspect_ratio(payload.get("aspect_ratio") or "1:1"))
    inputs = []
    for field in INPUT_IMAGE_FIELDS:
        value = payload.get(field)
        if value:
            size = image_sizes.get(field)
            inputs.append(InputRef(field=field, ref=value, width=size[0] if size else None,
                                   height=size[1] if size else None))
    return GenerationSpec(
        model=model,
        prompt=payload["prompt"],
        width=width,
        height=height,
        steps=int(payload["steps"]),
        guidance=float(payload["guidance"]),
        seed=asked or seed or secrets.randbelow(MAX_SEED) + 1,
        seed_random=not asked,
        output_format=payload.get("output_format") or "jpeg",
        safety_tolerance=int(payload.get("safety_tolerance", 2)),
        prompt_upsampling=bool(payload.get("prompt_upsampling")),
        inputs=tuple(inputs),
    )
