"""The worker loop: recover stalled work, claim the oldest request, run it, repeat."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from typing import Callable

from darkroom.engines import create_engine
from darkroom.engines.base import Engine
from darkroom.engines.registry import ModelSpec, Registry, load_registry
from darkroom.errors import EngineError
from darkroom.prompts import PromptUpsampler
from darkroom.safety import Moderator, SentenceEncoder
from darkroom.settings import Settings
from darkroom.storage import BlobStore, LocalBlobStore
from darkroom.store import Store
from darkroom.worker.job import JobRunner

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
EngineFactory = Callable[[ModelSpec, str | None], Engine]


class Worker:
    """One worker process's loop. Engines load on first use and stay loaded."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: Registry,
        blobs: BlobStore,
        *,
        moderator: Moderator,
        upsampler: PromptUpsampler,
        engine_factory: EngineFactory = create_engine,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.engine_factory = engine_factory
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.engines: dict[str, Engine] = {}
        self.models = self._served_models()
        self.jobs = JobRunner(settings, store, blobs, moderator, upsampler, self.worker_id)
        self._last_heartbeat = 0.0

    def _served_models(self) -> list[str]:
        wanted = self.settings.worker_models or self.registry.ids()
        served = []
        for model_id in wanted:
            spec = self.registry.get(model_id)
            if spec.available() or not spec.is_local:
                served.append(spec.id)
            else:
                log.warning("not serving %s: no weights at %s", spec.id, spec.path)
        return served

    def engine_for(self, spec: ModelSpec) -> Engine:
        engine = self.engines.get(spec.id)
        if engine is None:
            log.info("loading %s from %s", spec.id, spec.path)
            t0 = time.time()
            engine = self.engine_factory(spec, self.settings.device)
            engine.load()
            self.engines[spec.id] = engine
            log.info("loaded %s in %.1f s", spec.id, time.time() - t0)
        return engine

    def heartbeat(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._last_heartbeat >= HEARTBEAT_S:
            self.store.heartbeat_worker(self.worker_id, now=now)
            requeued, failed = self.store.requeue_stalled(self.settings.max_attempts, now=now)
            for rid in requeued:
                log.warning("request %s: its worker stopped responding; queued again", rid)
            for rid in failed:
                log.error("request %s: failed after %d attempts (worker_lost)", rid, self.settings.max_attempts)
            self._last_heartbeat = now

    def run_once(self) -> bool:
        """Claim and run one request. Returns False if there was nothing to do."""
        self.heartbeat()
        if not self.models:
            return False
        request = self.store.claim_request(self.worker_id, self.models, self.settings.lease_s)
        if request is None:
            return False
        log.info("claimed %s (%s, attempt %d)", request.id, request.model, request.attempts)
        spec = self.registry.get(request.model)
        try:
            engine = self.engine_for(spec)
        except EngineError as exc:
            self.store.fail_request(request.id, self.worker_id, {"code": exc.code, "message": exc.message})
            return True
        self.jobs.run(request, spec, engine)
        return True

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set; the request in hand is finished first."""
        self.store.register_worker(self.worker_id, self.models)
        log.info("worker %s serving %s", self.worker_id, ", ".join(self.models) or "nothing")
        self.jobs.moderator.warm_up()  # load the classifiers now, not inside the first request
        try:
            while not stop.is_set():
                if not self.run_once():
                    stop.wait(self.settings.poll_interval_s)
        finally:
            self.store.remove_worker(self.worker_id)
            for engine in self.engines.values():
                engine.close()


def build_worker(settings: Settings) -> Worker:
    store = Store.from_settings(settings)
    store.migrate()
    encoder = SentenceEncoder()  # one sentence encoder for moderation and upsampling
    return Worker(
        settings,
        store,
        load_registry(settings.resolved_models_file(), aliases=settings.aliases),
        LocalBlobStore(settings.data_dir / "blobs"),
        moderator=Moderator(image_detector=settings.image_moderation, encoder=encoder),
        upsampler=PromptUpsampler(chat_url=settings.upsampler_url, chat_model=settings.upsampler_model,
                                  chat_key=settings.upsampler_key, timeout_s=settings.upsampler_timeout_s,
                                  encoder=encoder),
    )


def run_worker(settings: Settings) -> None:
    """Run a worker in this process until SIGINT or SIGTERM."""
    worker = build_worker(settings)
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        log.info("signal %d: stopping after the current request", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    worker.run(stop)
