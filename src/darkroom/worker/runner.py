"""The worker loop: load the engines, then claim a batch, run its stages, repeat.

Order of business, and why:

1. Engines load (and warm) before the worker registers or claims anything: a load can
   take minutes, and a claimed request's lease must not lapse behind it. The models share
   the device within a memory budget (``engines.residency``: least recently used out first,
   to CPU memory or dropped) and share the text encoders they have in common; a model is put
   back on the device right before it generates.
2. An idle worker sleeps until a wake-up (``darkroom.wakeup``: a submit, a requeue)
   or the slow safety-net poll (``poll_interval_s``), then claims at once.
3. A claim takes up to ``max_batch`` requests that can share one pipeline call (same
   model and shape key), in the queue's priority and fairness order. When the worker is
   busy (its last batch had company) it waits up to ``batch_wait_ms`` for more of the same
   shape to arrive; a lone request never waits.
4. The lease starts at the claim and lives until the last request of the batch is
   published (``BatchLease``).
5. prepare -> generate -> publish (``stages``): publishing runs in a small pool, so the
   next batch generates while the last one is moderated, encoded and stored.

Nothing that goes wrong with one request or one store call ends the loop.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from darkroom.domain import Request
from darkroom.engines import create_engine
from darkroom.engines.base import Engine, GenerationJob, GenerationResult, Preview
from darkroom.engines.registry import ModelSpec, Registry, load_registry
from darkroom.engines.residency import Residency, SharedComponents, default_budget, estimate_weights_bytes
from darkroom.errors import EngineError
from darkroom.prompts import PromptUpsampler
from darkroom.safety import Moderator, SentenceEncoder
from darkroom.settings import Settings
from darkroom.storage import BlobStore, blob_store_from_settings
from darkroom.store import Store
from darkroom.wakeup import QUEUE, REQUEST, Listener
from darkroom.worker.lease import BatchLease
from darkroom.worker.retry import RetryPolicy
from darkroom.worker.stages import Stages, Task

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
RELOAD_AFTER_S = 60.0  # a model that failed to load is tried again after this
BUSY_WINDOW_S = 1.0  # a batch with company that ended this recently means requests are arriving
PREVIEW_EVERY_S = 1.0  # at most one preview a second per request
PREVIEW_SHARE = 0.2  # and previews take at most about this share of a run's time (a VAE decode is not free)
LISTEN_SLICE_S = 0.1  # the wake-up thread's longest wait: a drain joins it (a stop waited up to 1 s for it)
EngineFactory = Callable[[ModelSpec, str | None], Engine]


def default_device(device: str | None) -> str:
    """The given torch device, else CUDA when available, else CPU (as the engines choose)."""
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_defaults(device: str | None) -> tuple[int, float]:
    """(max_batch, batch_wait_ms) for a device: a GPU gains much more from batching than a CPU."""
    return (8, 25.0) if default_device(device).startswith("cuda") else (4, 10.0)


@dataclass
class PreviewPacer:
    """When to make a step preview: every ``every`` steps (0: never), not on the last step
    (the result follows), and spaced so they cost at most PREVIEW_SHARE of the time."""

    every: int
    next_at: float = 0.0  # time.monotonic() before which no preview is due

    def due(self, step: int, total: int, now: float) -> bool:
        return self.every > 0 and step % self.every == 0 and step < total and now >= self.next_at

    def spent(self, started: float, ended: float) -> None:
        self.next_at = started + max(PREVIEW_EVERY_S, (ended - started) / PREVIEW_SHARE)


class Worker:
    """One worker process's loop (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: Registry,
        blobs: BlobStore,
        *,
        moderator: Moderator,
        upsampler: PromptUpsampler,
        engine_factory: EngineFactory | None = None,
        worker_id: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        device = default_device(settings.device)
        # One set of shared components and one budget for every model this worker serves.
        self.shared = SharedComponents()
        self.residency = Residency(device, budget_bytes=default_budget(device, settings.vram_budget_gb),
                                   evict=settings.vram_evict)
        self.engine_factory: EngineFactory = engine_factory or partial(create_engine, shared=self.shared)
        self.worker_id = worker_id or settings.worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.retry = retry or RetryPolicy()
        self.engines: dict[str, Engine] = {}
        self.broken: dict[str, tuple[EngineError, float]] = {}  # model -> (load error, when)
        self.models = self._served_models()
        self.stages = Stages(settings, store, blobs, moderator, upsampler, self.worker_id, self.retry)
        default_batch, default_wait = device_defaults(settings.device)
        self.max_batch = settings.max_batch or default_batch
        self.batch_wait_s = (settings.batch_wait_ms if settings.batch_wait_ms is not None else default_wait) / 1000
        self._work = threading.Event()  # set by a QUEUE wake-up
        self._leases: dict[str, BatchLease] = {}  # request id -> its batch's lease, while running
        self._leases_lock = threading.Lock()
        self._publisher = ThreadPoolExecutor(settings.publish_threads, thread_name_prefix="publish")
        # Finished images waiting to be published are held in memory: bound them, so a slow
        # store slows the engine down instead of growing the backlog without end.
        self._publish_slots = threading.BoundedSemaphore(2 * self.max_batch)
        self._last_batch: tuple[int, float] = (0, 0.0)  # size and end time of the last batch
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

    # -- engines --------------------------------------------------------------------------

    def load_engines(self) -> None:
        """Load every served model now, before anything is claimed. A model that fails to
        load stays served: its requests fail with the load's error (model_unavailable)
        rather than wait for ever, and the load is tried again after RELOAD_AFTER_S."""
        for model_id in self.models:
            try:
                self.engine_for(self.registry.get(model_id))
            except EngineError as exc:
                log.error("could not load %s: %s", model_id, exc.message)

    def engine_for(self, spec: ModelSpec) -> Engine:
        """The loaded engine for ``spec``. Raises EngineError (the cached load error within RELOAD_AFTER_S)."""
        engine = self.engines.get(spec.id)
        if engine is not None:
            return engine
        failed = self.broken.get(spec.id)
        if failed is not None and time.monotonic() - failed[1] < RELOAD_AFTER_S:
            raise failed[0]
        log.info("loading %s from %s", spec.id, spec.path)
        t0 = time.time()
        try:
            engine = self.engine_factory(spec, self.settings.device)
            self._put_on_device(engine, spec)
        except EngineError as exc:
            self.broken[spec.id] = (exc, time.monotonic())
            self.residency.forget(spec.id)
            raise
        self.broken.pop(spec.id, None)
        self.engines[spec.id] = engine
        log.info("loaded %s in %.1f s", spec.id, time.time() - t0)
        return engine

    def _put_on_device(self, engine: Engine, spec: ModelSpec | None = None) -> None:
        """Load ``engine``'s model, or put it back on the device, within the residency budget.
        Engines that do not expose their pipeline (``pipeline``, ``loaded``) are loaded and left
        alone. ``spec``: for the size estimate of a first load."""
        if not (hasattr(engine, "pipeline") and hasattr(engine, "loaded")):
            engine.load()
            return
        estimate = None
        if spec is not None and spec.is_local and not engine.loaded:
            dtype = getattr(engine, "dtype", None)
            try:
                estimate = estimate_weights_bytes(spec.path, getattr(dtype, "itemsize", None))
            except (OSError, ValueError, KeyError) as exc:  # unreadable headers: the load will say
                log.debug("no size estimate for %s: %s", spec.id, exc)
        self.residency.use(engine, estimate_bytes=estimate)  # type: ignore[arg-type]

    # -- housekeeping ---------------------------------------------------------------------

    def heartbeat(self, *, draining: bool = False) -> None:
        """Say we are alive and what we hold; recover requests of workers that are not (lapsed
        leases, or owners silent for ``worker_dead_after_s``)."""
        now = time.time()
        with self._leases_lock:
            current = sorted(self._leases)
        self.store.heartbeat_worker(self.worker_id, now=now, current=current, draining=draining)
        requeued, failed = self.store.requeue_stalled(self.settings.max_attempts, now=now,
                                                      dead_after_s=self.settings.worker_dead_after_s)
        for rid in requeued:
            log.warning("request %s: its worker stopped responding; queued again", rid)
        for rid in failed:
            log.error("request %s: failed after %d attempts (worker_lost)", rid, self.settings.max_attempts)

    def _heartbeats(self, stop: threading.Event, done: threading.Event) -> None:
        # Its own thread, not the loop's: a batch can generate for minutes, and a worker that
        # is slow but alive must keep saying so (others requeue the requests of silent ones).
        while not done.wait(HEARTBEAT_S):
            try:
                self.heartbeat(draining=stop.is_set())
            except Exception:
                log.warning("heartbeat failed; retrying in %.0f s", HEARTBEAT_S, exc_info=True)

    def on_signal(self, channel: str, payload: str) -> None:
        """A wake-up: new work (QUEUE), or a change to a request (REQUEST; a cancel to act on)."""
        if channel == QUEUE:
            if not payload or payload in self.models:
                self._work.set()
        elif channel == REQUEST:
            with self._leases_lock:
                # "" means any request may have changed (a backend that may have lost signals).
                leases = set(self._leases.values()) if not payload else {self._leases.get(payload)}
            for lease in leases:
                if lease is not None:
                    lease.poke()

    def _listen(self, listener: Listener, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                for sig in listener.wait(timeout=LISTEN_SLICE_S):
                    self.on_signal(sig.channel, sig.payload)
            except Exception:
                log.warning("wake-up listener failed; polling every %.1f s until it recovers",
                            self.settings.poll_interval_s, exc_info=True)
                stop.wait(1.0)

    # -- one batch ------------------------------------------------------------------------

    def _busy(self) -> bool:
        size, ended = self._last_batch
        return size > 1 and time.monotonic() - ended < BUSY_WINDOW_S

    def _claim(self) -> list[Request]:
        claimed = self.retry.call("claiming", lambda: self.store.claim_batch(
            self.worker_id, self.models, self.settings.lease_s, max_batch=self.max_batch))
        if not claimed or len(claimed) >= self.max_batch or self.batch_wait_s <= 0 or not self._busy():
            return claimed
        # Requests are arriving (the last batch had company): give the batch a moment to fill.
        head = claimed[0]
        deadline = time.monotonic() + self.batch_wait_s
        while len(claimed) < self.max_batch and (left := deadline - time.monotonic()) > 0:
            self._work.clear()
            more = self.retry.call("claiming", lambda: self.store.claim_batch(
                self.worker_id, [head.model], self.settings.lease_s, max_batch=self.max_batch - len(claimed),
                shape_key=head.shape_key)) if head.shape_key else []
            claimed += more
            if not more:
                self._work.wait(left)
        return claimed

    def run_once(self) -> bool:
        """Claim and run one batch. Returns False if there was nothing to do."""
        if not self.models:
            return False
        self._work.clear()  # before the claim: a wake-up after it is not lost
        claimed = self._claim()
        if not claimed:
            return False
        claimed_at = time.time()
        lease = BatchLease(self.store, self.worker_id, [r.id for r in claimed], lease_s=self.settings.lease_s)
        tasks = [Task.claimed(r, lease, claimed_at) for r in claimed]
        with self._leases_lock:
            self._leases.update({t.id: lease for t in tasks})
        lease.start()
        log.info("claimed %s (%s, %d in batch)", ", ".join(f"{t.id} (attempt {t.attempt})" for t in tasks),
                 claimed[0].model, len(tasks))
        try:
            self._run_batch(tasks)
        finally:
            self._last_batch = (len(tasks), time.monotonic())
        return True

    def _run_batch(self, tasks: list[Task]) -> None:
        model = self.registry.get(tasks[0].request.model)
        try:
            engine = self.engine_for(model)
        except EngineError as exc:
            for task in tasks:
                self._end(task, exc.code, exc.message)
            return
        ready = []
        for task in tasks:
            try:
                self.stages.prepare(task, model)
            except EngineError as exc:
                self._end(task, exc.code, exc.message)
                continue
            except Exception as exc:
                log.exception("preparing %s failed", task.id)
                self._end(task, "engine_error", f"{type(exc).__name__}: {exc}")
                continue
            if task.lease.stopped(task.id):
                self._publish(task, None, stopped=True, engine_ms=0.0, batch_size=1)
            else:
                ready.append(task)
        if ready:
            self._generate(engine, ready)

    def _generate(self, engine: Engine, tasks: list[Task]) -> None:
        by_id = {t.id: t for t in tasks}
        pacers = {t.id: PreviewPacer(every=self.settings.preview_every_steps) for t in tasks}

        def on_step(request_id: str, step: int, total: int, preview: Preview | None = None) -> bool:
            task = by_id[request_id]
            now = time.monotonic()
            pacer = pacers[request_id]
            if preview is not None and pacer.due(step, total, now):
                try:
                    image = preview()  # must run now: the latents move on after this call
                except Exception:
                    log.warning("no preview for %s; previews off for this run", request_id, exc_info=True)
                    pacer.every = 0
                else:
                    self._publisher.submit(self.stages.store_preview, task, step, image)
                finally:
                    pacer.spent(now, time.monotonic())
            task.lease.report(request_id, step, total, urgent=step == total)
            return not task.lease.stopped(request_id)

        jobs: list[GenerationJob] = [t.job for t in tasks if t.job is not None]
        try:
            self._put_on_device(engine)
            # Upscaling to the asked size happens in the publish pool, beside the next batch.
            results = engine.generate(jobs, on_step, defer_resize=True)
        except EngineError as exc:
            if exc.code == "out_of_memory":
                # These requests fail; the next ones get the device to this model alone.
                log.warning("out of memory running %s: evicting the other models", engine.model_id)
                self.residency.on_oom(engine.model_id)
            for task in tasks:
                self._end(task, exc.code, exc.message)
            return
        except Exception as exc:  # an engine bug must fail the batch, not the worker
            log.exception("generating %s failed", ", ".join(by_id))
            for task in tasks:
                self._end(task, "engine_error", f"{type(exc).__name__}: {exc}")
            return
        for task, result in zip(tasks, results):
            self._publish(task, result, stopped=result.stopped, engine_ms=result.engine_ms, batch_size=len(tasks))

    def _publish(self, task: Task, result: GenerationResult | None, *, stopped: bool, engine_ms: float,
                 batch_size: int) -> None:
        self._publish_slots.acquire()

        def run() -> None:
            try:
                self.stages.publish(task, result, stopped=stopped, engine_ms=engine_ms, batch_size=batch_size)
            finally:
                self._forget(task)
                self._publish_slots.release()

        self._publisher.submit(run)

    def _end(self, task: Task, code: str, message: str) -> None:
        """Fail one request of the batch (if still ours) and let go of it."""
        if task.lease.cancelled(task.id):
            self.stages.cancelled(task)
        else:
            self.stages.fail(task, code, message)
        self.stages.release(task)
        self._forget(task)

    def _forget(self, task: Task) -> None:
        with self._leases_lock:
            self._leases.pop(task.id, None)

    # -- the loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set; the batch in hand is finished (and published) first."""
        self.load_engines()
        self.stages.moderator.warm_up()  # load the classifiers now, not inside the first request
        listener = self.store.wakeup.listen([QUEUE, REQUEST])
        done = threading.Event()
        listening = threading.Thread(target=self._listen, args=(listener, done), name="wakeup", daemon=True)
        listening.start()
        self.retry.call("registering", lambda: self.store.register_worker(
            self.worker_id, self.models, hostname=socket.gethostname(), pid=os.getpid(),
            device=self._device_name(), capacity=self.max_batch))
        beating = threading.Thread(target=self._heartbeats, args=(stop, done), name="heartbeat", daemon=True)
        beating.start()
        try:
            self.heartbeat()  # recover what a dead worker left before claiming anything
        except Exception:
            log.warning("first heartbeat failed; the heartbeat thread retries", exc_info=True)
        log.info("worker %s serving %s (batches of up to %d)", self.worker_id, ", ".join(self.models) or "nothing",
                 self.max_batch)
        try:
            while not stop.is_set():
                try:
                    if self.run_once():
                        continue
                except Exception:  # the loop outlives any one failure; the request's lease covers it
                    log.exception("worker loop error; carrying on")
                    stop.wait(1.0)
                    continue
                self._work.wait(self.settings.poll_interval_s)
                if stop.is_set():
                    break
        finally:
            log.info("worker %s draining: finishing what it holds", self.worker_id)
            self._publisher.shutdown(wait=True)  # finish what was generated
            done.set()
            listening.join(timeout=5)
            beating.join(timeout=5)
            listener.close()
            try:
                self.store.remove_worker(self.worker_id)
            except Exception:
                log.warning("could not unregister worker %s", self.worker_id, exc_info=True)
            for engine in self.engines.values():
                engine.close()

    def _device_name(self) -> str:
        if self.settings.device:
            return self.settings.device
        engine = next(iter(self.engines.values()), None)
        return str(getattr(engine, "device", "")) or "auto"

    def stop_waiting(self) -> None:
        """Wake the loop (used with ``stop``) so that it notices the stop at once."""
        self._work.set()


def build_worker(settings: Settings, *, store: Store | None = None) -> Worker:
    if store is None:
        store = Store.from_settings(settings)
        store.migrate()
    encoder = SentenceEncoder()  # one sentence encoder for moderation and upsampling
    return Worker(
        settings,
        store,
        load_registry(settings.resolved_models_file(), aliases=settings.aliases),
        blob_store_from_settings(settings),
        moderator=Moderator(image_detector=settings.image_moderation, encoder=encoder),
        upsampler=PromptUpsampler(chat_url=settings.upsampler_url, chat_model=settings.upsampler_model,
                                  chat_key=settings.upsampler_key, timeout_s=settings.upsampler_timeout_s,
                                  encoder=encoder),
    )


def run_worker(settings: Settings, *, exit_with_parent: bool = False) -> None:
    """Run a worker in this process until SIGINT or SIGTERM (then drain: finish the batch in
    hand, claim nothing new, return). ``exit_with_parent``: also drain when standard input
    reaches its end, which is how a child of ``darkroom serve`` learns that its parent died
    (even by kill -9: the kernel closes the parent's end of the pipe)."""
    worker = build_worker(settings)
    stop = threading.Event()
    if exit_with_parent:
        def watch_parent() -> None:
            try:
                while os.read(0, 4096):
                    pass
            except OSError:
                pass
            log.warning("parent process gone: draining")
            stop.set()
            worker.stop_waiting()

        threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()

    def _stop(signum: int, frame: object) -> None:
        log.info("signal %d: stopping after the current batch", signum)
        stop.set()
        worker.stop_waiting()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    worker.run(stop)
