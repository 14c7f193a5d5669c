"""One-shot generation for the CLI: in this process, or against a running server.

Both paths go through the same request lifecycle as the API (submit, claim, run,
finish), so ``darkroom generate`` exercises exactly what a server would do.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from darkroom.errors import EngineError, ModelUnavailable

LOCAL_KEY_NAME = "local-cli"


class _Bar:
    """queued -> step i/N -> done, on stderr."""

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TimeElapsedColumn(), transient=False)
        self.task = self.progress.add_task("queued", total=None)

    def __enter__(self) -> "_Bar":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, status: str, step: int | None, total: int | None) -> None:
        if status == "processing" and total:
            self.progress.update(self.task, description="generating", completed=step or 0, total=total)
        else:
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
    request = service.submit(key, spec.id, payload).request
    worker = build_worker(settings)
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
                time.sleep(0.1)
    finally:
        stop.set()
        thread.join()
    status = status_object(service, "http://local", current)

    def fetch(url: str) -> bytes:
        return service.blobs.get(current.outcome["media"][0]["key"])

    return _finish(status, fetch)


def generate_remote(url: str, api_key: str, model: str | None, payload: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Submit to a server with the SDK and wait, showing progress."""
    from darkroom.client import Client

    with Client(base_url=url, api_key=api_key) as client:
        if model is None:
            model = client.models()[0]["model"]
        submitted = client.submit(model, **payload)
        with _Bar() as bar:
            def on_update(s) -> None:
                progress = s.raw.get("progress") or {}
                bar.update(s.status, progress.get("step"), progress.get("total"))

            final = client.wait(submitted.request_id, on_update=on_update)
        return _finish(final.raw, client.download)
