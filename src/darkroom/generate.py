"""One-shot generation for the CLI: in this process, or against a running server.

Both paths go through the same request lifecycle as the API (submit, claim, run,
finish), so ``darkroom generate`` exercises exactly what a server would do.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from darkroom.errors import DarkroomError, EngineError, ModelUnavailable
from darkroom.wakeup import REQUEST

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


def _finish(status: dict[str, Any], fetch: Callable[[str], bytes]) -> tuple[dict[str, Any], bytes]:
    if status["status"] != "success":
        err = (status.get("outcome") or {}).get("error") or {}
        raise EngineError(err.get("message", f"request ended {status['status']}"),
                          code=err.get("code", status["status"]))
    return status, fetch(status["outcome"]["media_urls"][0]["url"])


def generate_local(settings, model: str | None, payload: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Submit through the service and run a worker in this process until the request ends.

    The worker serves only the requested model (it loads nothing else). The request is made
    with the internal ``local-cli`` key, which ``keys list`` does not show.
    """
    from darkroom.api.render import status_object
    from darkroom.service import Service
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
    worker = build_worker(settings.model_copy(update={"worker_models": [spec.id]}), store=service.store)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        with _Bar() as bar:
            while True:
                current = service.get_request(key, request.id)
                position = service.queue_position(current) if current.status.value == "queued" else None
                bar.update(current.status.value, current.progress_step, current.progress_total,
                           queue_position=position)
                if current.status.is_terminal:
                    break
                changes.wait(timeout=1.0)  # woken by the worker's claim, each progress flush, the finish
    finally:
        stop.set()
        worker.stop_waiting()
        thread.join()
        changes.close()
        # Interrupted (Ctrl+C): the request must not stay queued for the next run to pick up.
        with contextlib.suppress(DarkroomError):  # it may end meanwhile (409), or the store be gone
            if not service.get_request(key, request.id).status.is_terminal:
                service.cancel_request(key, request.id)
    status = status_object(service, "http://local", current)

    def fetch(url: str) -> bytes:
        return service.blobs.get(current.outcome["media"][0]["key"])

    return _finish(status, fetch)


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
