"""The engine protocol: what the worker needs from anything that makes images.

Engines are synchronous and may hold a GPU; the worker calls them from its own
process, never from the API's event loop.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image


@dataclass(frozen=True)
class GenerationJob:
    """One image to make. Sizes are what the caller gets back (about 1 MP)."""

    request_id: str
    prompt: str
    width: int
    height: int
    seed: int
    steps: int
    guidance: float
    images: tuple[Image.Image, ...] = ()  # input_image, input_image_2..8, decoded, for editing


@dataclass(frozen=True)
class GenerationResult:
    request_id: str
    image: Image.Image | None  # None when the job was stopped
    stopped: bool = False
    engine_ms: float = 0.0
    # Set when the engine left ``image`` at its generation size (``defer_resize``): the job's size.
    target_size: tuple[int, int] | None = None
    upscaler: str = "lanczos"  # how ``finished()`` enlarges (the model's ``upscaler`` option)

    def finished(self) -> Image.Image | None:
        """The image at the job's size, resizing it now if the engine deferred that."""
        if self.image is None or self.target_size is None:
            return self.image
        from darkroom.engines.resize import resize

        return resize(self.image, *self.target_size, upscaler=self.upscaler)


#: The longest side, in pixels, of a preview image.
PREVIEW_MAX_SIDE = 256

#: Decodes a job's current latents to a small RGB image (long side at most PREVIEW_MAX_SIDE).
Preview = Callable[[], Image.Image]


class StepCallback(Protocol):
    def __call__(self, request_id: str, step: int, total: int, preview: Preview | None = None) -> bool:
        """Called after each denoising step; return False to stop that job.

        ``preview``, when the engine offers one, makes a low-resolution image of the job
        as it stands after this step. It is valid only during this call (the latents move
        on afterwards), costs engine time, and must not change the job's final pixels.
        Engines pass it by keyword and only to callbacks that take it (``takes_preview``),
        so three-argument callbacks keep working.
        """
        ...


def takes_preview(on_step: Callable[..., bool]) -> bool:
    """Whether ``on_step`` accepts the ``preview`` keyword (or any keyword)."""
    try:
        params = inspect.signature(on_step).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False
    return any((p.name == "preview" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
               or p.kind is p.VAR_KEYWORD for p in params)


class Engine(Protocol):
    """Loads a model once and turns batches of jobs into images."""

    model_id: str

    def load(self) -> None:
        """Load weights; idempotent. Raises EngineError(code="model_unavailable") if it cannot."""
        ...

    def generate(self, jobs: Sequence[GenerationJob], on_step: StepCallback, *,
                 defer_resize: bool = False) -> list[GenerationResult]:
        """Run the jobs (one batch) and return one result per job, in order.

        ``defer_resize``: the engine may leave images at their generation size and set
        ``target_size``; ``GenerationResult.finished()`` resizes them (off the engine's thread).

        Same job (prompt, seed, size, steps, guidance, images) gives the same pixels.
        Raises EngineError for failures that the request should report.
        """
        ...

    def close(self) -> None:
        """Free memory (GPU included)."""
        ...
