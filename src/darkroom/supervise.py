"""Runs ``darkroom worker`` as a child of ``darkroom serve`` and restarts it if it dies.

The worker is a separate process so the API process never imports torch and a crash in
an engine (or the OOM killer) never takes the API down.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)


class WorkerProcess:
    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, max_backoff_s: float = 30.0) -> None:
        self.cmd = [sys.executable, "-m", "darkroom.cli", "worker", *args]
        self.env = env
        self.max_backoff_s = max_backoff_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            started = time.monotonic()
            self.proc = subprocess.Popen(self.cmd, env=self.env)
            log.info("worker process %d started", self.proc.pid)
            code = self.proc.wait()
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
