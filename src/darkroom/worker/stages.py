"""A claimed request's stages: prepare -> generate -> publish, each reading the spec.

- ``prepare`` (the worker thread, per request): moderate the prompt, load and moderate
  the input images, upsample the prompt; gives the engine job.
- generate (the worker thread, per batch): one ``engine.generate`` call; see ``runner``.
- ``publish`` (a small thread pool, per request, beside the next batch's generation):
  moderate the image, encode it, store it under a key of this attempt, and finish the
  request, cancel-aware. The result is stored before the status says success, and the
  lease stays alive until then: a crash in between leaves the request to be re-run,
  never half-finished.

A stage that fails ends its request ``failed`` with the error's code; nothing here ends
the worker.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from darkroom.domain import GenerationSpec, Request, Status
from darkroom.engines.base import PREVIEW_MAX_SIDE, GenerationJob, GenerationResult, Preview
from darkroom.engines.registry import ModelSpec
from darkroom.engines.vocabulary import prompt_warnings
from darkroom.errors import EngineError
from darkroom.imaging import encode_image
from darkroom.netguard import NetGuard
from darkroom.prompts import PromptUpsampler
from darkroom.safety import Moderator, Verdict
from darkroom.service import preview_key, result_key
from darkroom.settings import Settings
from darkroom.spec import build_spec
from darkroom.storage import BlobStore
from darkroom.store import Store
from darkroom.worker.inputs import load_input_images
from darkroom.worker.lease import BatchLease
from darkroom.worker.retry import RetryPolicy

log = logging.getLogger(__name__)

STORE_RESULT_BUDGET_S = 120.0  # how long a finished image waits for the blob store to come back


class Moderated(EngineError):
    """Input or output blocked by moderation; ``code`` is input_moderated or output_moderated."""


@dataclass
class Task:
    """One claimed request on its way through the stages."""

    request: Request
    spec: GenerationSpec
    lease: BatchLease
    claimed_at: float  # time.time() when the claim returned
    prompt: str = ""  # what the engine gets (upsampled or not)
    prompt_info: dict[str, Any] = field(default_factory=dict)
    job: GenerationJob | None = None
    timings: dict[str, float] = field(default_factory=dict)  # stage -> ms
    preview_written: bool = False

    @classmethod
    def claimed(cls, request: Request, lease: BatchLease, claimed_at: float) -> Task:
        # Rows queued before the spec existed (schema revision 0003) get one built from the payload now.
        spec = request.spec or build_spec(request.model, request.payload)
        return cls(request=request, spec=spec, lease=lease, claimed_at=claimed_at)

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def attempt(self) -> int:
        return self.request.attempts


@dataclass
class Stages:
    """What the stages need, and the one retry policy their store writes share."""

    settings: Settings
    store: Store
    blobs: BlobStore
    moderator: Moderator
    upsampler: PromptUpsampler
    worker_id: str
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    # -- prepare ------------------------------------------------------------------------

    def prepare(self, task: Task, model: ModelSpec) -> None:
        """Fill in ``task.job``. Raises EngineError (moderation, input images)."""
        started = time.time()
        spec = task.spec
        tolerance = spec.safety_tolerance
        # Input moderation comes before any engine time is spent.
        _check(self.moderator.check_text(spec.prompt, tolerance), "input_moderated", "the prompt")
        images = load_input_images(spec.inputs, self.blobs, max_bytes=self.settings.max_image_bytes,
                                   guard=NetGuard.from_settings(self.settings),
                                   max_pixels=self.settings.max_image_pixels)
        for image in images:
            _check(self.moderator.check_image(image, tolerance), "input_moderated", "an input image")
        prompt = spec.prompt
        if spec.prompt_upsampling:
            up = self.upsampler.upsample(prompt, seed=spec.seed,
                                         profile=model.options.get("upsample_profile", "general"))
            task.prompt_info = {"original_prompt": prompt,
                                "upsampling": {"source": up.source, "fallback_reason": up.fallback_reason}}
            prompt = up.prompt
            _check(self.moderator.check_text(prompt, tolerance), "input_moderated", "the upsampled prompt")
        task.prompt = prompt
        task.job = GenerationJob(request_id=task.id, prompt=prompt, width=spec.width, height=spec.height,
                                 seed=spec.seed, steps=spec.steps, guidance=spec.guidance, images=images)
        task.timings["prepare_ms"] = (time.time() - started) * 1000

    # -- previews (decoded on the engine thread, stored here) ---------------------------

    def store_preview(self, task: Task, step: int, preview: Image.Image) -> None:
        """Encode and store a preview JPEG (overwriting the last), then report its step."""
        try:
            preview = preview.convert("RGB")
            preview.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))  # engines should already; cheap to be sure
            self.blobs.put(preview_key(task.id, task.attempt), encode_image(preview, "jpeg"), "image/jpeg")
        except Exception:  # a preview is a nicety: never fail the request for one
            log.warning("could not store a preview of %s", task.id, exc_info=True)
            return
        task.preview_written = True
        task.lease.preview(task.id, step)

    # -- publish ------------------------------------------------------------------------

    def publish(self, task: Task, result: GenerationResult | Image.Image | None, *, stopped: bool, engine_ms: float,
                batch_size: int) -> None:
        """Take a generated (or stopped) request to its end state. Never raises.

        ``result`` is the engine's (resized here if the engine deferred it) or an image."""
        try:
            started = time.perf_counter()
            image = result.finished() if isinstance(result, GenerationResult) else result
            # Resizing to the asked size is the engine's work done here, off its thread: it
            # counts as engine time, as it did when the engine did it.
            engine_ms += (time.perf_counter() - started) * 1000
            self._publish(task, image, stopped=stopped, engine_ms=engine_ms, batch_size=batch_size)
        except EngineError as exc:
            self.fail(task, exc.code, exc.message)
        except Exception as exc:  # a bug must fail the request, not the pool
            log.exception("publishing %s failed", task.id)
            self.fail(task, "engine_error", f"{type(exc).__name__}: {exc}")
        finally:
            self.release(task)

    def _publish(self, task: Task, image: Image.Image | None, *, stopped: bool, engine_ms: float,
                 batch_size: int) -> None:
        lease = task.lease
        if lease.lost(task.id):
            log.warning("dropping the result of %s: another worker owns it now", task.id)
            return
        if stopped or image is None or lease.cancelled(task.id):
            self.cancelled(task)
            return
        started = time.time()
        spec = task.spec
        verdict = self.moderator.check_image(image, spec.safety_tolerance)
        _check(verdict, "output_moderated", "the generated image")
        data = encode_image(image, spec.output_format)
        key = result_key(task.id, task.attempt, 0, spec.output_format)
        self._store_result(task, key, data, f"image/{spec.output_format}")
        finished = time.time()
        request = task.request
        outcome = {
            "media": [{"id": "0", "key": key}],
            "seed": spec.seed,
            "width": image.width,
            "height": image.height,
            "output_format": spec.output_format,
            "prompt": task.prompt,
            **task.prompt_info,
            "moderation": {"mode": verdict.mode, "scores": verdict.scores},
            "batch_size": batch_size,
            "timings": {
                "queued_ms": _ms((request.started_at or task.claimed_at) - request.queued_at),
                "claim_ms": _ms(task.claimed_at - (request.started_at or task.claimed_at)),
                "prepare_ms": round(task.timings.get("prepare_ms", 0.0), 1),
                "engine_ms": round(engine_ms, 1),
                "encode_store_ms": _ms(finished - started),
                "total_ms": _ms(finished - request.created_at),
            },
        }
        # A closed-world model (darkroom-mini) names the prompt words it does not know; it still draws.
        warnings = prompt_warnings(self.settings, request.model, task.prompt)
        if warnings:
            outcome["warnings"] = warnings
        task.lease.ending(task.id)
        ended = self.retry.call(f"finishing {task.id}",
                                lambda: self.store.finish_request(task.id, self.worker_id, outcome,
                                                                  steps=task.spec.steps))
        if ended is None:
            # Not ours any more, or ours already: a retried finish whose first COMMIT went
            # through (the error came after it) matches nothing the second time. Look before
            # deleting anything.
            ended = self.retry.call(f"reading {task.id}", lambda: self.store.get_request(task.id))
            if ended is not None and ended.status == Status.SUCCESS and (ended.outcome or {}).get("media") == \
                    outcome["media"]:
                return
            ended = None
        if ended is None or ended.status != Status.SUCCESS:
            # Not ours any more, or a cancel that came first won: the image must not outlive that.
            log.info("request %s ended %s before its result was stored; result discarded", task.id,
                     ended.status.value if ended else "elsewhere")
            self.blobs.delete(key)
        else:
            log.info("request %s done in %.0f ms (engine %.0f ms, batch of %d)", task.id,
                     outcome["timings"]["total_ms"], engine_ms, batch_size)

    def _store_result(self, task: Task, key: str, data: bytes, content_type: str) -> None:
        """Put the image, retrying through an outage of the blob store (S3 down for a while):
        the lease stays alive meanwhile, so the work is kept, not redone. After
        ``STORE_RESULT_BUDGET_S`` the request fails with ``storage_unavailable``: its final
        status tells the truth rather than waiting for ever."""
        deadline = time.monotonic() + STORE_RESULT_BUDGET_S
        delay = 0.2
        while True:
            try:
                self.blobs.put(key, data, content_type)
                return
            except Exception as exc:
                if time.monotonic() + delay > deadline or task.lease.stopped(task.id):
                    raise EngineError(f"could not store the result: {type(exc).__name__}: {exc}",
                                      code="storage_unavailable") from exc
                log.warning("storing the result of %s failed (%s); retrying in %.1f s", task.id,
                            type(exc).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- endings --------------------------------------------------------------------------

    def fail(self, task: Task, code: str, message: str) -> None:
        """End the request failed (if it is still ours). Never raises."""
        log.info("request %s failed: %s (%s)", task.id, message, code)
        if task.lease.lost(task.id):
            return
        task.lease.ending(task.id)
        try:
            self.retry.call(f"failing {task.id}", lambda: self.store.fail_request(
                task.id, self.worker_id, {"code": code, "message": message}))
        except Exception:
            log.exception("could not record the failure of %s; its lease will lapse and it will be retried",
                          task.id)

    def cancelled(self, task: Task) -> None:
        if task.lease.lost(task.id):
            return
        task.lease.ending(task.id)
        try:
            self.retry.call(f"cancelling {task.id}", lambda: self.store.mark_cancelled(task.id, self.worker_id))
            log.info("request %s cancelled while processing", task.id)
        except Exception:
            log.exception("could not record the cancel of %s", task.id)

    def release(self, task: Task) -> None:
        """The request is done with here: its preview goes (only shown while processing), its lease ends."""
        if task.preview_written and not task.lease.lost(task.id):
            try:
                self.blobs.delete(preview_key(task.id, task.attempt))
            except Exception:
                log.warning("could not delete the preview of %s", task.id, exc_info=True)
        task.lease.done(task.id)


def _check(verdict: Verdict, code: str, what: str) -> None:
    if not verdict.allowed:
        reasons = ", ".join(verdict.reasons) or "policy"
        raise Moderated(f"{what} was blocked by moderation at safety_tolerance {verdict.level} ({reasons})",
                        code=code)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


__all__ = ["Moderated", "Preview", "Stages", "Task"]
