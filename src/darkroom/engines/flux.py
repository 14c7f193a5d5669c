"""The diffusers FLUX engine: ``FluxPipeline`` (text-to-image) and ``FluxKontextPipeline`` (editing).

One engine serves one registry entry and is used by one worker thread; it is not
thread-safe (a diffusers pipeline holds per-call state such as ``_interrupt``).

Sizes. The pipeline runs at the job's size, or, when the model sets ``native_area`` and
the job is larger, at about that many pixels with the job's aspect ratio; either way rounded to what the
pipeline needs (multiples of 2 x the VAE's scale factor: 16 for FLUX). The image is then
resized to exactly the job's width x height.

Determinism. Each job gets its own ``torch.Generator`` seeded with ``job.seed``, so the
same job gives the same pixels on the same machine; with a stochastic scheduler the per-step noise
comes from the same generator (``sampling.job_generators``). Alike jobs given together
share one pipeline call (at most the ``max_batch`` option, if the model sets one): each
keeps its own noise, but not bit-exact pixels, since a batch changes matrix shapes and so
rounding (measured: +-1 in a few pixel values on CPU; tests/worker check it stays within
1/255 per channel).

Previews. ``on_step`` callbacks that take a ``preview`` keyword get, at each step, a
function that decodes that job's current latents to a small image (see ``_preview``).
It only reads the latents, so whether it is called never changes the final pixels.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from darkroom.engines.base import (
    PREVIEW_MAX_SIDE,
    GenerationJob,
    GenerationResult,
    StepCallback,
    takes_preview,
)
from darkroom.engines.loader import (
    FluxOptions,
    load_flux_pipeline,
    parse_options,
    resolve_device,
    resolve_dtype,
)
from darkroom.engines.registry import ModelSpec
from darkroom.engines.resize import resize
from darkroom.engines.sampling import job_generators
from darkroom.errors import EngineError


@dataclass(frozen=True)
class _Plan:
    """One job, sized: what the pipeline is asked for."""

    index: int  # position in the batch given to generate()
    job: GenerationJob
    size: tuple[int, int]  # (width, height) the pipeline generates at
    condition: Image.Image | None  # the (stitched, resized) input image for Kontext

    def group_key(self) -> tuple[Any, ...]:
        cond = self.condition.size if self.condition is not None else None
        return (self.size, self.job.width, self.job.height, self.job.steps, self.job.guidance, cond)


class FluxEngine:
    """Engine over a diffusers FLUX pipeline; see the module docstring.

    Args:
        spec: the registry entry (``pipeline`` "flux" or "flux-kontext", ``options`` as in
            ``darkroom.engines.loader``).
        device: a torch device string; default CUDA when available, else CPU.

    Raises:
        EngineError(code="model_unavailable"): ``spec.options`` is invalid.
    """

    def __init__(self, spec: ModelSpec, device: str | None = None) -> None:
        self.model_id = spec.id
        self.spec = spec
        self.options: FluxOptions = parse_options(spec)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.options, self.device)
        self._pipe: Any = None

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    def load(self) -> None:
        """Load the pipeline once. Raises EngineError(code="model_unavailable") if it cannot."""
        if self._pipe is None:
            self._pipe = load_flux_pipeline(self.spec, self.options, self.device, self.dtype)

    def close(self) -> None:
        """Drop the pipeline and return cached GPU memory."""
        self._pipe = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

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
            EngineError: code "out_of_memory" for CUDA OOM, "engine_error" for any other
                pipeline failure (the original exception chained); "model_unavailable"
                if the model cannot be loaded.
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
        multiple = self._pipe.vae_scale_factor * 2
        area = job.width * job.height
        if self.options.native_area is not None:
            area = min(area, self.options.native_area)
        size = fit_area(job.width, job.height, area, multiple)
        condition = None
        if job.images:
            if not self.spec.editing:
                raise EngineError(f"model {self.model_id!r} makes images from text only; it takes no input image")
            stitched = stitch(job.images)
            # The input image is given at the generation's area (its own aspect ratio):
            # at native_area it is as small as the output, not Kontext's ~1 MP.
            condition = resize(stitched, *fit_area(stitched.width, stitched.height, size[0] * size[1], multiple))
        return _Plan(index=index, job=job, size=size, condition=condition)

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
        first = group[0].job
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
                        preview = lambda latents=latents: self._preview(pipeline, latents, width, height)
                        go_on = on_step(plan.job.request_id, i + 1, plan.job.steps, preview=preview)
                    else:
                        go_on = on_step(plan.job.request_id, i + 1, plan.job.steps)
                    if go_on is False:
                        stopped[k] = True
            except BaseException as exc:  # the caller's error, not the engine's: re-raised as is
                callback_error.append(exc)
                stopped[:] = [True] * len(group)
            if all(stopped):
                # Cooperative stop: the loop skips its remaining steps; what it still
                # decodes and returns is discarded below.
                pipeline._interrupt = True
            return {}

        generators = [torch.Generator(self.device).manual_seed(plan.job.seed) for plan in group]
        kwargs: dict[str, Any] = dict(
            prompt=[plan.job.prompt for plan in group],
            width=width,
            height=height,
            num_inference_steps=first.steps,
            guidance_scale=first.guidance,
            generator=generators,
            callback_on_step_end=on_step_end,
            output_type="pil",
        )
        if self.options.max_sequence_length is not None:
            kwargs["max_sequence_length"] = self.options.max_sequence_length
        if self.options.true_cfg_scale is not None:
            cfg = self.options.true_cfg_scale
            kwargs["true_cfg_scale"] = first.guidance if cfg == "guidance" else float(cfg)
            # diffusers runs true CFG only with a negative prompt (scale > 1); one per prompt.
            kwargs["negative_prompt"] = [self.options.negative_prompt or ""] * len(group)
        if self.spec.editing:
            # FluxKontextPipeline resizes twice unless told not to: it rescales width x height
            # to ``max_area`` pixels (default 1024**2) at the same aspect, so max_area = w*h
            # keeps our size; and with ``_auto_resize`` (default True) it snaps the input image
            # to the nearest PREFERRED_KONTEXT_RESOLUTIONS entry (~1 MP), so we turn that off
            # and give the image already sized (see _plan). Both as of diffusers 0.42.
            kwargs["max_area"] = width * height
            kwargs["_auto_resize"] = False
            if group[0].condition is not None:
                kwargs["image"] = [plan.condition for plan in group]

        started = time.perf_counter()
        try:
            with job_generators(pipe, generators):  # stochastic schedulers: per-job noise (see sampling.py)
                images = pipe(**kwargs).images
        except torch.OutOfMemoryError as exc:
            self._free_cuda_cache()
            raise EngineError(f"out of memory: {exc}", code="out_of_memory") from exc
        except Exception as exc:
            if "out of memory" in str(exc).lower():
                self._free_cuda_cache()
                raise EngineError(f"out of memory: {exc}", code="out_of_memory") from exc
            raise EngineError(str(exc) or type(exc).__name__, code="engine_error") from exc
        if callback_error:
            raise callback_error[0]

        if defer_resize:
            outputs = [None if stopped[k] else images[k] for k in range(len(group))]
        else:
            outputs = [None if stopped[k] else resize(images[k], plan.job.width, plan.job.height)
                       for k, plan in enumerate(group)]
        engine_ms = (time.perf_counter() - started) * 1000.0
        return [GenerationResult(request_id=plan.job.request_id, image=image, stopped=stopped[k], engine_ms=engine_ms,
                                 target_size=(plan.job.width, plan.job.height) if defer_resize else None)
                for k, (plan, image) in enumerate(zip(group, outputs))]

    @staticmethod
    def _preview(pipe: Any, latents: torch.Tensor, width: int, height: int) -> Image.Image:
        """One job's packed latents (1, seq, channels) at ``width`` x ``height`` as a small RGB image.

        Unpacks as the pipeline does, shrinks the latent grid (area average) so that the
        decoded long side is at most ``PREVIEW_MAX_SIDE``, and decodes with the model's
        own VAE: a decode costs about pixels x decoder, so shrinking first makes a preview
        of a 1 MP job ~16x cheaper than decoding it whole. Reads ``latents``, never writes.
        """
        scale = pipe.vae_scale_factor
        grid = pipe._unpack_latents(latents, height, width, scale)
        rows, cols = grid.shape[-2:]
        limit = max(1, PREVIEW_MAX_SIDE // scale)
        if max(rows, cols) > limit:
            shrink = limit / max(rows, cols)
            grid = F.interpolate(grid, size=(max(1, round(rows * shrink)), max(1, round(cols * shrink))), mode="area")
        vae = pipe.vae
        grid = grid / vae.config.scaling_factor + vae.config.shift_factor
        with torch.no_grad():
            decoded = vae.decode(grid.to(vae.dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(decoded, output_type="pil")[0]

    def _free_cuda_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


# -- image helpers (torch-free) ------------------------------------------------------


def fit_area(width: int, height: int, area: int, multiple: int) -> tuple[int, int]:
    """About ``area`` pixels at the ratio width:height, each side a positive multiple of ``multiple``."""
    scale = math.sqrt(area / (width * height))
    return (max(multiple, round(width * scale / multiple) * multiple),
            max(multiple, round(height * scale / multiple) * multiple))


def stitch(images: Sequence[Image.Image]) -> Image.Image:
    """One RGB image: several references side by side at the first one's height.

    diffusers' Kontext pipeline takes one conditioning image per prompt (a list means a
    batch), so extra references (``input_image_2..4``) are joined into one, as common
    Kontext workflows do.
    """
    if len(images) == 1:
        return images[0].convert("RGB")
    height = images[0].height
    scaled = [im.convert("RGB").resize((max(1, round(im.width * height / im.height)), height),
                                       Image.Resampling.LANCZOS) for im in images]
    canvas = Image.new("RGB", (sum(im.width for im in scaled), height))
    x = 0
    for im in scaled:
        canvas.paste(im, (x, 0))
        x += im.width
    return canvas
