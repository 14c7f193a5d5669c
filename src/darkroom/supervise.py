"""Runs ``darkroom worker`` as a child of ``darkroom serve`` and restarts it if it dies.

The worker is a separate process so the API process never imports torch and a crash in
an engine (or the OOM killer) never takes the API down.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class WorkerProcess:
    """One supervised ``darkroom worker`` child.

    Each start gets a fresh worker id (``--worker-id``), so when the child dies the parent
    knows whose requests to recover: ``on_exit(worker_id)`` is called at once (``darkroom
    serve`` requeues them instead of waiting out their leases). The child's standard input
    is a pipe from the parent: if the parent dies, even by kill -9, the child sees the end of
    it and drains (``--exit-with-parent``), so no orphan keeps claiming work.
    """

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, max_backoff_s: float = 30.0,
                 on_exit: Callable[[str], None] | None = None) -> None:
        self.cmd = [sys.executable, "-m", "darkroom.cli", "worker", "--exit-with-parent", *args]
        self.env = env
        self.max_backoff_s = max_backoff_s
        self.on_exit = on_exit
        self.worker_id: str | None = None
        self._starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            started = time.monotonic()
            self._starts += 1
            self.worker_id = f"{socket.gethostname()}-serve{os.getpid()}-{self._starts}"
            self.proc = subprocess.Popen([*self.cmd, "--worker-id", self.worker_id], env=self.env,
                                         stdin=subprocess.PIPE)
            log.info("worker process %d started (%s)", self.proc.pid, self.worker_id)
            code = self.proc.wait()
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            if self.on_exit is not None and code != 0:
                try:
                    self.on_exit(self.worker_id)
                except Exception:
                    log.exception("could not recover the requests of %s; their leases will lapse", self.worker_id)
            if self._stop.is_set():
                return
            # A worker that ran for a while and died gets restarted at once; one that dies
            # at start-up (bad config, missing weights) is retried with growing delays.
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, self.max_backoff_s)
            log.error("worker process exited with %s; restarting in %.0f s", code, backoff)
            self._stop.wait(backoff)

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        proc = self.proc
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._thread.join(timeout=5)
