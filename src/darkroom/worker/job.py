"""Running one claimed request: moderate, upsample, generate, moderate, store."""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from darkroom.domain import Request
from darkroom.engines.base import PREVIEW_MAX_SIDE, Engine, GenerationJob, Preview
from darkroom.engines.params import parse_aspect_ratio
from darkroom.engines.registry import ModelSpec
from darkroom.errors import EngineError
from darkroom.imaging import encode_image, size_for_aspect
from darkroom.netguard import NetGuard
from darkroom.prompts import PromptUpsampler
from darkroom.safety import Moderator, Verdict
from darkroom.service import preview_key, result_key
from darkroom.settings import Settings
from darkroom.storage import BlobStore
from darkroom.store import Store
from darkroom.worker.inputs import load_input_images
from darkroom.worker.lease import LeaseKeeper

log = logging.getLogger(__name__)

MAX_SEED = 2147483647
PROGRESS_EVERY_S = 0.25  # at most this often per request, so fast CPU steps don't hammer the DB
PREVIEW_EVERY_S = 1.0  # at most one preview a second per request
PREVIEW_SHARE = 0.2  # and previews take at most about this share of a run's time (a VAE decode is not free)


@dataclass
class PreviewPacer:
    """When to make a step preview: every ``every`` steps (0: never), not on the last step
    (the result follows), and spaced so they cost at most PREVIEW_SHARE of the time."""

    every: int
    next_at: float = 0.0  # time.monotonic() before which no preview is due
    written: bool = False

    def due(self, step: int, total: int, now: float) -> bool:
        return self.every > 0 and step % self.every == 0 and step < total and now >= self.next_at

    def spent(self, started: float, ended: float) -> None:
        self.next_at = started + max(PREVIEW_EVERY_S, (ended - started) / PREVIEW_SHARE)


class Moderated(EngineError):
    """Input or output blocked by moderation; ``code`` is input_moderated or output_moderated."""


@dataclass
class JobRunner:
    settings: Settings
    store: Store
    blobs: BlobStore
    moderator: Moderator
    upsampler: PromptUpsampler
    worker_id: str

    def run(self, request: Request, spec: ModelSpec, engine: Engine) -> None:
        """Take a claimed request to a terminal state (or leave it if our lease was lost)."""
        with LeaseKeeper(self.store, request.id, self.worker_id, self.settings.lease_s) as lease:
            previews = PreviewPacer(every=self.settings.preview_every_steps)
            try:
                self._run(request, spec, engine, lease, previews)
            except EngineError as exc:
                log.info("request %s failed: %s (%s)", request.id, exc.message, exc.code)
                if not lease.lost.is_set():
                    self.store.fail_request(request.id, self.worker_id, {"code": exc.code, "message": exc.message})
            except Exception as exc:  # an engine bug must fail the request, not the worker
                log.exception("request %s failed unexpectedly", request.id)
                if not lease.lost.is_set():
                    self.store.fail_request(request.id, self.worker_id,
                                            {"code": "engine_error", "message": f"{type(exc).__name__}: {exc}"})
            finally:
                # A preview is only shown while processing; once the request has ended
                # (or another worker has it, and writes its own) ours is garbage.
                if previews.written and not lease.lost.is_set():
                    self.blobs.delete(preview_key(request.id))

    def _check(self, verdict: Verdict, code: str, what: str) -> None:
        if not verdict.allowed:
            reasons = ", ".join(verdict.reasons) or "policy"
            raise Moderated(f"{what} was blocked by moderation at safety_tolerance {verdict.level} ({reasons})",
                            code=code)

    def _write_preview(self, request_id: str, preview: Preview, pacer: PreviewPacer) -> bool:
        """Store a preview JPEG (overwriting the last); False if the engine could not make one."""
        started = time.monotonic()
        try:
            image = preview().convert("RGB")
            image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))  # engines should already; cheap to be sure
            self.blobs.put(preview_key(request_id), encode_image(image, "jpeg"), "image/jpeg")
        except Exception:  # a preview is a nicety: never fail the request for one
            log.warning("no preview for %s; previews off for this run", request_id, exc_info=True)
            pacer.every = 0
            return False
        finally:
            pacer.spent(started, time.monotonic())
        pacer.written = True
        return True

    def _run(self, request: Request, spec: ModelSpec, engine: Engine, lease: LeaseKeeper,
             previews: PreviewPacer) -> None:
        started = time.time()
        payload: dict[str, Any] = request.payload
        tolerance = int(payload.get("safety_tolerance", 2))
        prompt = payload["prompt"]

        # Input moderation comes before any engine time is spent.
        self._check(self.moderator.check_text(prompt, tolerance), "input_moderated", "the prompt")
        images = load_input_images(payload, self.blobs, max_bytes=self.settings.max_image_bytes,
                                   guard=NetGuard.from_settings(self.settings))
        for image in images:
            self._check(self.moderator.check_image(image, tolerance), "input_moderated", "an input image")

        seed = int(payload.get("seed") or 0) or secrets.randbelow(MAX_SEED) + 1
        prompt_info: dict[str, Any] = {}
        if payload.get("prompt_upsampling"):
            up = self.upsampler.upsample(prompt, seed=seed, profile=spec.options.get("upsample_profile", "general"))
            prompt_info = {"original_prompt": prompt, "upsampling": {"source": up.source,
                                                                     "fallback_reason": up.fallback_reason}}
            prompt = up.prompt
            self._check(self.moderator.check_text(prompt, tolerance), "input_moderated", "the upsampled prompt")

        width, height = size_for_aspect(*parse_aspect_ratio(payload.get("aspect_ratio") or "1:1"))
        job = GenerationJob(request_id=request.id, prompt=prompt, width=width, height=height, seed=seed,
                            steps=int(payload["steps"]), guidance=float(payload["guidance"]), images=images)

        if lease.cancelled.is_set():
            self.store.mark_cancelled(request.id, self.worker_id)
            return

        last_report = 0.0

        def on_step(request_id: str, step: int, total: int, preview: Preview | None = None) -> bool:
            nonlocal last_report
            now = time.monotonic()
            preview_step = None
            if preview is not None and previews.due(step, total, now):
                preview_step = step if self._write_preview(request_id, preview, previews) else None
            if preview_step is not None or step == total or now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                state = self.store.report_progress(request_id, self.worker_id, step, total,
                                                  lease_s=self.settings.lease_s, preview_step=preview_step)
                lease.observe(state.owned, state.cancel_requested)
            return not (lease.cancelled.is_set() or lease.lost.is_set())

        t_engine = time.time()
        [result] = engine.generate([job], on_step)
        engine_ms = (time.time() - t_engine) * 1000

        if lease.lost.is_set():
            log.warning("dropping the result of %s: another worker owns it now", request.id)
            return
        if result.stopped or lease.cancelled.is_set():
            self.store.mark_cancelled(request.id, self.worker_id)
            log.info("request %s cancelled while processing", request.id)
            return
        assert result.image is not None

        t_store = time.time()
        verdict = self.moderator.check_image(result.image, tolerance)
        self._check(verdict, "output_moderated", "the generated image")
        output_format = payload.get("output_format", "jpeg")
        data = encode_image(result.image, output_format)
        key = result_key(request.id, 0, output_format)
        self.blobs.put(key, data, f"image/{output_format}")
        finished = time.time()
        outcome = {
            "media": [{"id": "0", "key": key}],
            "seed": seed,
            "width": result.image.width,
            "height": result.image.height,
            "output_format": output_format,
            "prompt": prompt,
            **prompt_info,
            "moderation": {"mode": verdict.mode, "scores": verdict.scores},
            "timings": {
                "queued_ms": round(((request.started_at or started) - request.queued_at) * 1000, 1),
                "prepare_ms": round((t_engine - started) * 1000, 1),
                "engine_ms": round(engine_ms, 1),
                "encode_store_ms": round((finished - t_store) * 1000, 1),
                "total_ms": round((finished - request.created_at) * 1000, 1),
            },
        }
        if self.store.finish_request(request.id, self.worker_id, outcome) is None:
            log.warning("request %s was no longer ours to finish; result discarded", request.id)
            self.blobs.delete(key)
        else:
            log.info("request %s done in %.0f ms (engine %.0f ms)", request.id, outcome["timings"]["total_ms"],
                     engine_ms)
