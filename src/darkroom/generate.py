"""One-shot generation for the CLI: in this process, or against a running server.

Both paths go through the same request lifecycle as the API (submit, claim, run,
finish), so ``darkroom generate`` exercises exactly what a server would do.

Imports at module level are the client's alone (rich, darkroom.errors): ``generate --url``
runs where only the base distribution is installed (no torch, no server stack). The local
path imports the server's modules when it runs, and nothing of the HTTP layer at all.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from darkroom.errors import DarkroomError, EngineError, ModelUnavailable

if TYPE_CHECKING:
    from darkroom.domain import Request
    from darkroom.safety import Moderator
    from darkroom.settings import Settings
    from darkroom.worker.runner import Worker

log = logging.getLogger(__name__)

#: The key ``generate_local`` submits with (requests need one). It is internal: ``keys list``
#: does not show it and ``keys create`` refuses the name.
LOCAL_KEY_NAME = "local-cli"
INTERNAL_KEY_NAMES = frozenset({LOCAL_KEY_NAME})

#: Where the progress bar goes (stderr; the result line goes to stdout). The CLI sends its log
#: records here too while the bar runs, so that they print above the bar instead of onto its line.
console = Console(stderr=True)

#: Warnings that are expected on the way to an image with darkroom's own models, silenced at
#: their source by ``quiet_libraries`` (each logger's level, for the duration of the load and
#: run; ``-v`` keeps them): logger -> what it says.
EXPECTED_NOISE = {
    # darkroom-mini's text encoders are BERT models where the FLUX pipeline class names CLIP and T5
    "diffusers.pipelines.pipeline_utils": "Expected types for text_encoder ... got BertModel",
    # transformers' image processors fall back to PIL without torchvision (which darkroom does not need)
    "transformers.utils.import_utils": "`CLIPImageProcessor` requires torchvision (not installed) ...",
    # the skin-tone image check stands in for NudeNet where the extra is not installed (docs/safety.md)
    "darkroom.safety.moderator": "image check in fallback mode (skin-tone heuristic; NudeNet not installed) ...",
}


class _Bar:
    """queued (N ahead) -> generating i/N -> done, on stderr.

    The count column is the bar's own text rather than rich's ``completed/total``, so a
    queued request shows its place in the queue instead of ``0/None``; a success fills
    the bar even when the last step reported was not the last step run.
    """

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                                 TimeElapsedColumn(), transient=False, console=console)
        self.task = self.progress.add_task("queued", total=None, count="")
        self._total: int | None = None  # the step count, once known

    def __enter__(self) -> "_Bar":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, status: str, step: int | None, total: int | None, queue_position: int | None = None) -> None:
        if status == "processing" and total:
            self._total = total
            self.progress.update(self.task, description="generating", completed=step or 0, total=total,
                                 count=f"{step or 0}/{total}")
        elif status == "queued":
            self._total = None  # a requeued request starts its steps over
            ahead = {None: "", 0: "next"}.get(queue_position, f"{queue_position} ahead")
            self.progress.update(self.task, description="queued", completed=0, count=ahead)
        elif status == "success":
            total = total or self._total
            self.progress.update(self.task, description="done", completed=total or 1, total=total or 1,
                                 count=f"{total}/{total}" if total else "")
        elif status == "processing":  # before the worker's first step report
            self.progress.update(self.task, description=status, count="")
        else:  # failed, cancelled: the count stays where the request stopped
            self.progress.update(self.task, description=status)


class ConsoleLogHandler(logging.Handler):
    """Log records printed through ``console``: above a running progress bar, never onto its line
    (and, unlike rich's own handler, not wrapped into columns)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


@contextlib.contextmanager
def quiet_libraries(*, expected: bool = True) -> Iterator[None]:
    """While loading and running a model in this process: transformers' and diffusers' records
    handed to the caller's logging setup (propagated, not printed by their own stderr handlers,
    so that they cannot land on the progress bar's line), their loading progress bars off, and
    with ``expected`` the warnings in ``EXPECTED_NOISE`` off (those loggers at ERROR). All is put
    back afterwards. Errors still show."""
    saved_levels = {name: logging.getLogger(name).level for name in EXPECTED_NOISE}
    undo: list[Callable[[], None]] = []
    if expected:
        for name in EXPECTED_NOISE:
            logging.getLogger(name).setLevel(logging.ERROR)
    for lib in ("transformers", "diffusers"):
        try:
            hf_logging = __import__(f"{lib}.utils.logging", fromlist=["logging"])
        except ImportError:  # pragma: no cover - both are dependencies
            continue
        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()
        undo += [hf_logging.enable_default_handler, hf_logging.disable_propagation]
        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            undo.append(hf_logging.enable_progress_bar)
    try:
        yield
    finally:
        for fn in reversed(undo):
            fn()
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def one_shot_collector() -> Iterator[None]:
    """The cyclic garbage collector paused for a one-shot generation, whose process ends with it.

    Importing torch, diffusers and transformers and loading a pipeline makes objects that live
    as long as the process, and the collector walks them again and again: in a cold run with
    the tiny test model, 1,500 passes (nine full ones, the engine's own ``gc.collect()`` on close
    among them) took 1.9 s of a loaded 2-core machine to find some 15,000 objects in cycles.
    Paused, reference counting still frees everything else and those cycles wait for the exit
    (darkroom-mini's cold run: peak RSS 837 MiB against 816, bench/cold_generate.py). On the way
    out the survivors are frozen (``gc.freeze``) so that the collections still to come (the
    engine's close, the interpreter's exit) skip them; ``generate_local`` freezes them before it
    stops its worker for the same reason.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def _finish(status: dict[str, Any], fetch: Callable[[str], bytes]) -> tuple[dict[str, Any], bytes]:
    if status["status"] != "success":
        err = (status.get("outcome") or {}).get("error") or {}
        raise EngineError(err.get("message", f"request ended {status['status']}"),
                          code=err.get("code", status["status"]))
    return status, fetch(status["outcome"]["media_urls"][0]["url"])


def generate_local(settings: Settings, model: str | None, payload: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Submit through the service and run a worker in this process until the request ends.

    The worker serves only the requested model (it loads nothing else); the moderation
    classifiers load beside the model rather than after it. The request is made with the
    internal ``local-cli`` key, which ``keys list`` does not show, and is recorded in the
    store like any other.

    Returns ``(status, image bytes)``: ``status`` has the request's ``request_id``, ``status``
    and ``outcome`` (seed, width, height, timings, warnings, ...) as the API reports them,
    less the media URLs (there is no server to link to). Raises EngineError (the request's
    error code) when the request does not succeed.
    """
    from darkroom.service import Service
    from darkroom.wakeup import REQUEST
    from darkroom.worker.runner import build_worker

    service = Service.from_settings(settings)
    spec = service.registry.get(model or service.registry.default or service.registry.ids()[0])
    if spec.is_local and not spec.available():
        # No worker in this process could ever take the request: say so instead of waiting.
        raise ModelUnavailable(f"model {spec.id} has no weights at {spec.path} (see docs/models.md; "
                               "darkroom-mini is trained with `python -m training.train`)")
    key = next((k for k in service.store.list_keys() if k.name == LOCAL_KEY_NAME and k.active), None)
    if key is None:
        key, _ = service.store.create_key(LOCAL_KEY_NAME)
    changes = service.store.wakeup.listen([REQUEST])  # before the submit: no change is missed
    request = service.submit(key, spec.id, payload).request
    stop = threading.Event()
    worker: Worker | None = None
    threads: list[threading.Thread] = []
    try:
        worker = build_worker(settings.model_copy(update={"worker_models": [spec.id]}), store=service.store)
        threads.append(_warm_up_beside(worker.stages.moderator))
        threads.append(threading.Thread(target=worker.run, args=(stop,), name="worker", daemon=True))
        threads[-1].start()
        with _Bar() as bar:
            while True:
                current = service.get_request(key, request.id)
                position = service.queue_position(current) if current.status.value == "queued" else None
                bar.update(current.status.value, current.progress_step, current.progress_total,
                           queue_position=position)
                if current.status.is_terminal:
                    break
                changes.wait(timeout=1.0)  # woken by the worker's claim, each progress flush, the finish
            # While the bar is still live: the worker's last records (the publish, the drain) print
            # above it. Printed from another thread while the bar stops, one could land on its line.
            _stop_worker(worker, stop, threads)
    finally:
        if worker is not None:
            _stop_worker(worker, stop, threads)
        changes.close()
        # Interrupted (Ctrl+C), or no worker: the request must not stay queued for the next run.
        with contextlib.suppress(DarkroomError):  # it may end meanwhile (409), or the store be gone
            if not service.get_request(key, request.id).status.is_terminal:
                service.cancel_request(key, request.id)
    return _finish(_local_status(current), lambda _: service.blobs.get(current.outcome["media"][0]["key"]))


def _stop_worker(worker: Worker, stop: threading.Event, threads: list[threading.Thread]) -> None:
    """Stop the in-process worker (it drains: what it holds is finished and stored) and wait
    for it and the classifiers' loading thread."""
    if not gc.isenabled():  # one_shot_collector: the engine's close collects; spare it what lives until exit
        gc.freeze()
    stop.set()
    worker.stop_waiting()
    for thread in threads:
        if thread.ident is not None:  # started
            thread.join()


def _local_status(request: Request) -> dict[str, Any]:
    """The parts of the API's status object that ``generate`` reads, from the stored request:
    the outcome as rendered for the API, with the media's blob key in place of its URL."""
    outcome = dict(request.outcome or {})
    media = outcome.pop("media", None)
    if media is not None:
        outcome = {"media_urls": [{"id": m["id"], "url": m["key"]} for m in media], **outcome}
    return {"request_id": request.id, "status": request.status.value, "outcome": outcome}


def _warm_up_beside(moderator: Moderator) -> threading.Thread:
    """Load the moderation classifiers in a thread of their own while the worker loads the model.

    What overlaps is their loads' work outside the GIL (the sentence encoder embedding its
    exemplars, NudeNet's session: about 2 s on 2 cores) with the model's imports (torch,
    diffusers: seconds, all of them holding it). Their own imports happen here first, in the
    calling thread, so that the two threads never import at once (``Moderator.import_modules``
    says why). The worker's ``warm_up`` after its model load then finds each classifier loaded,
    or waits on its lock; a failure here is left for that call to raise where the worker
    handles it.
    """
    moderator.import_modules()

    def warm() -> None:
        try:
            moderator.warm_up()
        except Exception:  # noqa: BLE001 - re-raised by the worker's own warm_up
            log.debug("moderation warm-up beside the model failed; the worker retries it", exc_info=True)

    thread = threading.Thread(target=warm, name="moderation-load", daemon=True)
    thread.start()
    return thread


def generate_remote(url: str, api_key: str, model: str | None, payload: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Submit to a server with the SDK and wait, showing progress.

    ``wait`` follows the server's events stream (polling if it cannot), so the bar
    moves with each reported step and the result is fetched as soon as it exists.
    """
    from darkroom.client import Client, RequestStatus

    with Client(base_url=url, api_key=api_key) as client:
        if model is None:
            model = client.models()[0]["model"]
        submitted = client.submit(model, **payload)
        with _Bar() as bar:
            def on_update(s: RequestStatus) -> None:
                step, total = (s.progress.step, s.progress.total) if s.progress else (None, None)
                bar.update(s.status.value, step, total, queue_position=s.queue_position)

            final = client.wait(submitted.request_id, on_update=on_update)
            on_update(final)  # the bar ends on the final word, filled on success
        return _finish(dict(final.raw), client.download)
