"""One-shot generation for the CLI: in this process, or against a running server.

Both paths go through the same request lifecycle as the API (submit, claim, run,
finish), so ``darkroom generate`` exercises exactly what a server would do.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from darkroom.errors import EngineError, ModelUnavailable
from darkroom.wakeup import REQUEST

LOCAL_KEY_NAME = "local-cli"


class _Bar:
    """queued (N ahead) -> generating i/N -> done, on stderr.

    The count column is the bar's own text rather than rich's ``completed/total``, so a
    queued request shows its place in the queue instead of ``0/None``; a success fills
    the bar even when the last step reported was not the last step run.
    """

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                                 TimeElapsedColumn(), transient=False)
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


def _finish(status: dict[str, Any], fetch: Callable[[str], bytes]) -> tuple[dict[str, Any], bytes]:
    if status["status"] != "success":
        err = (status.get("outcome") or {}).get("error") or {}
        raise EngineError(err.get("message", f"request ended {status['status']}"),
                          code=err.get("code", status["status"]))
    return status, fetch(status["outcome"]["media_urls"][0]["url"])


def generate_local(settings, model: str | None, payload: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Submit through the service and run a worker in this process until the request ends."""
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
    worker = build_worker(settings, store=service.store)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        with _Bar() as bar:
            while True:
                current = service.get_request(key, request.id)
                bar.update(current.status.value, current.progress_step, current.progress_total)
                if current.status.is_terminal:
                    break
                changes.wait(timeout=1.0)  # woken by the worker's claim, each progress flush, the finish
    finally:
        stop.set()
        worker.stop_waiting()
        thread.join()
        changes.close()
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
