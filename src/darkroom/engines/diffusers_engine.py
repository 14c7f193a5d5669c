"""The diffusers engine: one class for every pipeline family of ``darkroom.engines.families``.

One engine serves one registry entry and is used by one worker thread; it is not
thread-safe (a diffusers pipeline holds per-call state such as ``_interrupt``).

What differs between families (which class, which call arguments ``guidance`` becomes, how input
images are given, how the latents are laid out) is read from the family table; this module holds
what is common: sizing, batching, seeds, the step callback, cancel, previews and errors.

Sizes. The pipeline runs at the job's size, or, when the model sets ``native_area`` and
the job is larger, at about that many pixels with the job's aspect ratio; either way rounded to what the
pipeline needs (multiples of 2 x the VAE's scale factor: 16 for every family here). The image is then
resized to exactly the job's width x height (Lanczos, or the model's ``upscaler``).

Determinism. Each job gets its own ``torch.Generator`` seeded with ``job.seed``, so the
same job gives the same pixels on the same machine; with a stochastic scheduler the per-step noise
comes from the same generator (``sampling.job_generators``). Alike jobs given together
share one pipeline call (at most the ``max_batch`` option, if the model sets one): each
keeps its own noise, but not bit-exact pixels, since a batch changes matrix shapes and so
rounding (measured: +-1 in a few pixel values on CPU; tests/worker check it stays within
1/255 per channel). Edits whose pipeline takes one list of references per call (FLUX.2,
Qwen-Image-Edit) run one request a call.

Previews. ``on_step`` callbacks that take a ``preview`` keyword get, at each step, a
function that makes a small image of that job's current latents (``previews.py``).
It only reads the latents, so whether it is called never changes the final pixels.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image

from darkroom.engines.accel import reset_step_cache
from darkroom.engines.base import GenerationJob, GenerationResult, StepCallback, takes_preview
from darkroom.engines.loader import EngineOptions, load_pipeline, parse_options, resolve_device, resolve_dtype
from darkroom.engines.previews import (
    Projection,
    decode_preview,
    fit_projection,
    preview_mode,
    project_preview,
    vae_grid,
)
from darkroom.engines.registry import ModelSpec
from darkroom.engines.residency import SharedComponents
from darkroom.engines.resize import resize
from darkroom.engines.sampling import job_generators
from darkroom.engines.sizing import fit_area, stitch
from darkroom.errors import EngineError

#: Families whose pipeline (FluxPipeline, FluxKontextPipeline) takes ``true_cfg_scale`` beside its
#: distilled ``guidance_scale``: the ``true_cfg_scale`` option applies to them only.
_TRUE_CFG_OPTION_FAMILIES = ("flux", "flux-kontext")


@dataclass(frozen=True)
class _Plan:
    """One job, sized: what the pipeline is asked for."""

    index: int  # position in the batch given to generate()
    job: GenerationJob
    size: tuple[int, int]  # (width, height) the pipeline generates at
    images: tuple[Image.Image, ...]  # input images as given to the pipeline (Kontext: one, stitched)
    alone: bool  # may not share a call with other jobs

    def group_key(self) -> tuple[Any, ...]:
        sizes = tuple(im.size for im in self.images)
        alone = self.job.request_id if self.alone else None
        return (self.size, self.job.width, self.job.height, self.job.steps, self.job.guidance, sizes, alone)


class DiffusersEngine:
    """Engine over a diffusers pipeline of any family in ``families.FAMILIES``; see the module docstring.

    Args:
        spec: the registry entry (``pipeline`` names the family, ``options`` as in
            ``darkroom.engines.loader``).
        device: a torch device string; default CUDA when available, else CPU.
        shared: text encoders are loaded through it, shared with the other models that use it
            (``darkroom.engines.loader``, "Shared components"); None: this model's own.

    Raises:
        EngineError(code="model_unavailable"): ``spec.options`` is invalid (speed options included).
    """

    def __init__(self, spec: ModelSpec, device: str | None = None, *,
                 shared: SharedComponents | None = None) -> None:
        self.model_id = spec.id
        self.spec = spec
        self.family = spec.family
        self.options: EngineOptions = parse_options(spec)
        if self.options.true_cfg_scale is not None and spec.pipeline not in _TRUE_CFG_OPTION_FAMILIES:
            raise EngineError(f"model {spec.id!r}: option true_cfg_scale applies to the "
                              f"{' and '.join(_TRUE_CFG_OPTION_FAMILIES)} families only; {spec.pipeline} "
                              f"takes its guidance as {self.family.guidance_mode}", code="model_unavailable")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.options, self.device)
        self.shared = shared
        self._pipe: Any = None
        self._projection: Projection | None = None

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    @property
    def pipeline(self) -> Any:
        """The loaded diffusers pipeline; None before ``load()`` and after ``close()``. For the
        residency manager (which moves its components) and for inspection; calling it directly
        bypasses the engine's seeds, noise and cancel."""
        return self._pipe

    def load(self) -> None:
        """Load the pipeline once. Raises EngineError(code="model_unavailable") if it cannot."""
        if self._pipe is not None:
            return
        pipe = load_pipeline(self.spec, self.options, self.device, self.dtype, self.shared)
        if self.family.step_callback and preview_mode(pipe, self.options.preview) == "projection":
            self._projection = fit_projection(self.family, pipe)
        self._pipe = pipe

    def close(self) -> None:
        """Drop the pipeline and return cached GPU memory."""
        self._pipe = None
        self._projection = None
        self._free_memory()

    def generate(self, jobs: Sequence[GenerationJob], on_step: StepCallback, *,
                 defer_resize: bool = False) -> list[GenerationResult]:
        """Run ``jobs`` and return one result per job, in order (loads the model if needed).

        ``on_step(request_id, step, total)`` is called after each denoising step of each
        job; when it returns False that job stops and its result has ``stopped=True`` and
        no image. If ``on_step`` takes a ``preview`` keyword it also gets a function that
        returns a small RGB image of the job so far (long side <= ``PREVIEW_MAX_SIDE``),
        valid during that call only. ``engine_ms`` is the wall time of the pipeline call that made the job
        (shared by the jobs of one batch), resizing included. ``defer_resize``: leave each image at the
        size the pipeline made it (``target_size`` set): the caller resizes with ``result.finished()``
        off the engine's thread (an upscale to 1 MP costs 0.1 s or more on a CPU).

        Raises:
            EngineError: code "out_of_memory" for CUDA OOM (memory freed, the engine stays usable),
                "engine_error" for any other pipeline failure or a job the model cannot take
                (the original exception chained); "model_unavailable" if the model cannot be loaded.
        """
        if not jobs:
            return []
        self.load()
        plans = [self._plan(i, job) for i, job in enumerate(jobs)]
        results: dict[int, GenerationResult] = {}
        for group in self._groups(plans):
            for plan, result in zip(group, self._run(group, on_step, defer_resize)):
                results[plan.index] = result
        return [results[i] for i in range(len(plans))]

    # -- planning ------------------------------------------------------------------

    def _plan(self, index: int, job: GenerationJob) -> _Plan:
        family = self.family
        multiple = self._pipe.vae_scale_factor * 2
        area = job.width * job.height
        if self.options.native_area is not None:
            area = min(area, self.options.native_area)
        size = fit_area(job.width, job.height, area, multiple)
        if job.images and not family.editing:
            raise EngineError(f"model {self.model_id!r} makes images from text only; it takes no input image")
        if len(job.images) > family.max_input_images:
            raise EngineError(f"model {self.model_id!r} takes at most {family.max_input_images} input images, "
                              f"got {len(job.images)}")
        if family.needs_image and not job.images:
            raise EngineError(f"model {self.model_id!r} edits images; it needs an input image")
        references = (stitch(job.images),) if job.images and family.stitch_references else job.images
        # Input images are given at the generation's area (their own aspect ratio): at native_area
        # they are as small as the output, not the pipelines' ~1 MP, which costs tokens every step.
        images = tuple(resize(im.convert("RGB"), *self._input_size(im, size[0] * size[1], multiple),
                              self.options.upscaler) for im in references)
        alone = not family.batched_prompts or (bool(images) and not family.images_per_prompt)
        return _Plan(index=index, job=job, size=size, images=images, alone=alone)

    def _input_size(self, image: Image.Image, area: int, multiple: int) -> tuple[int, int]:
        """An input image's size at about ``area`` pixels, no side under the family's minimum (FLUX.2: 64)."""
        width, height = fit_area(image.width, image.height, area, multiple)
        short = min(width, height)
        if short < self.family.min_image_side:
            grow = self.family.min_image_side / short
            width, height = fit_area(image.width, image.height, round(width * height * grow * grow), multiple)
        return width, height

    def _groups(self, plans: list[_Plan]) -> list[list[_Plan]]:
        """Jobs that can share one pipeline call, at most ``max_batch`` each, in first-seen order."""
        groups: dict[tuple[Any, ...], list[list[_Plan]]] = {}
        ordered: list[list[_Plan]] = []
        for plan in plans:
            chunks = groups.setdefault(plan.group_key(), [])
            if not chunks or len(chunks[-1]) >= (self.options.max_batch or len(plans)):
                chunks.append([])
                ordered.append(chunks[-1])
            chunks[-1].append(plan)
        return ordered

    # -- running -------------------------------------------------------------------

    def _run(self, group: list[_Plan], on_step: StepCallback, defer_resize: bool = False) -> list[GenerationResult]:
        pipe = self._pipe
        width, height = group[0].size
        stopped = [False] * len(group)
        callback_error: list[BaseException] = []
        with_preview = takes_preview(on_step)

        def on_step_end(pipeline: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            try:
                for k, plan in enumerate(group):
                    if stopped[k]:
                        continue
                    if with_preview:
                        latents = tensors["latents"][k:k + 1]
                        preview = lambda latents=latents: self._preview(latents, width, height)
                        go_on = on_step(plan.job.request_id, i + 1, plan.job.steps, preview=preview)
                    else:
                        go_on = on_step(plan.job.request_id, i + 1, plan.job.steps)
                    if go_on is False:
                        stopped[k] = True
            except BaseException as exc:  # the caller's error, not the engine's: re-raised as is
                callback_error.append(exc)
                stopped[:] = [True] * len(group)
            if all(stopped):
                # Cooperative stop: the loop skips its remaining steps; what it still decodes and
                # returns is discarded below. diffusers exposes ``interrupt`` as a read-only property
                # over ``_interrupt`` and documents setting ``_interrupt`` from this callback as the
                # way to stop (its "Interrupt the diffusion process" guide): no public setter exists.
                pipeline._interrupt = True
            return {}

        generators = [torch.Generator(self.device).manual_seed(plan.job.seed) for plan in group]
        kwargs = self._call_kwargs(group, generators)
        if self.family.step_callback:
            kwargs["callback_on_step_end"] = on_step_end

        started = time.perf_counter()
        try:
            with job_generators(pipe, generators):  # stochastic schedulers: per-job noise (see sampling.py)
                images = pipe(**kwargs).images
        except torch.OutOfMemoryError as exc:  # torch.cuda.OutOfMemoryError is this class
            reset_step_cache(pipe)
            self._free_memory()
            raise EngineError(f"out of memory: {exc}", code="out_of_memory") from exc
        except Exception as exc:
            reset_step_cache(pipe)
            raise EngineError(str(exc) or type(exc).__name__, code="engine_error") from exc
        if callback_error:
            # The step cache resets itself when a call ends, stopped ones included; an error in
            # the callback ended this one early all the same. Out of memory there (a preview's
            # VAE decode on the GPU) is the run's, like any other.
            if isinstance(callback_error[0], torch.OutOfMemoryError):
                self._free_memory()
                raise EngineError(f"out of memory: {callback_error[0]}",
                                  code="out_of_memory") from callback_error[0]
            raise callback_error[0]

        upscaler = self.options.upscaler
        if defer_resize:
            outputs = [None if stopped[k] else images[k] for k in range(len(group))]
        else:
            outputs = [None if stopped[k] else resize(images[k], plan.job.width, plan.job.height, upscaler)
                       for k, plan in enumerate(group)]
        engine_ms = (time.perf_counter() - started) * 1000.0
        return [GenerationResult(request_id=plan.job.request_id, image=image, stopped=stopped[k], engine_ms=engine_ms,
                                 target_size=(plan.job.width, plan.job.height) if defer_resize else None,
                                 upscaler=upscaler)
                for k, (plan, image) in enumerate(zip(group, outputs))]

    def _call_kwargs(self, group: list[_Plan], generators: list[torch.Generator]) -> dict[str, Any]:
        """The pipeline call's arguments for ``group`` (all alike but for prompt and seed)."""
        family, options = self.family, self.options
        first = group[0]
        width, height = first.size
        kwargs: dict[str, Any] = dict(
            prompt=[plan.job.prompt for plan in group],
            width=width,
            height=height,
            num_inference_steps=first.job.steps,
            generator=generators,
            output_type="pil",
        )
        if options.max_sequence_length is not None:
            kwargs["max_sequence_length"] = options.max_sequence_length
        negative = [options.negative_prompt if options.negative_prompt is not None
                    else family.default_negative_prompt] * len(group)
        guidance = first.job.guidance
        if family.guidance_mode == "distilled":
            kwargs["guidance_scale"] = guidance
        elif family.guidance_mode == "true_cfg":
            kwargs["true_cfg_scale"] = guidance
            if guidance > 1:  # the pipelines warn about a negative prompt that goes unused
                kwargs["negative_prompt"] = negative
        elif family.guidance_mode == "cfg":
            kwargs["guidance_scale"] = guidance
            if family.negative_prompt:
                kwargs["negative_prompt"] = negative
        elif family.guidance_mode == "none" and "Flux2Klein" in family.pipeline_class:
            # The step-distilled klein ignores guidance but warns about its own default of 4.
            kwargs["guidance_scale"] = family.guidance.default
        if options.true_cfg_scale is not None:  # FLUX.1 without a guidance embedding (darkroom-mini)
            cfg = options.true_cfg_scale
            kwargs["true_cfg_scale"] = guidance if cfg == "guidance" else float(cfg)
            # diffusers runs true CFG only with a negative prompt (scale > 1); one per prompt.
            kwargs["negative_prompt"] = [options.negative_prompt or ""] * len(group)
        if family.takes_max_area:
            # FluxKontextPipeline resizes twice unless told not to: it rescales width x height to
            # ``max_area`` pixels (default 1024**2) at the same aspect, so max_area = w*h keeps our
            # size; and with ``_auto_resize`` (default True) it snaps the input image to the nearest
            # PREFERRED_KONTEXT_RESOLUTIONS entry (~1 MP). ``_auto_resize`` is the only way to turn
            # that off (a call argument, underscored but without a public alternative, as of
            # diffusers 0.42), so we turn it off and give the image already sized (see _plan).
            kwargs["max_area"] = width * height
            kwargs["_auto_resize"] = False
        if first.images:
            if family.images_per_prompt:
                kwargs["image"] = [plan.images[0] for plan in group]
            else:  # one request's references (the group is that request alone)
                kwargs["image"] = list(first.images)
        return kwargs

    def _preview(self, latents: torch.Tensor, width: int, height: int) -> Image.Image:
        """One job's latents (as the step callback got them) at ``width`` x ``height`` as a small RGB
        image. Reads ``latents``, never writes."""
        with torch.no_grad():
            grid = vae_grid(self.family, self._pipe, latents, width, height)
            if self._projection is not None:
                return project_preview(self._projection, grid)
            return decode_preview(self.family, self._pipe, grid)

    def _free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
