"""Real darkroom processes for end-to-end tests: ``darkroom serve`` / ``worker`` on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def darkroom_env(data_dir: Path, models_file: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env.update({
        "DARKROOM_DATA_DIR": str(data_dir),
        "DARKROOM_MODELS_FILE": str(models_file),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2"),
        **extra,
    })
    return env


def run_cli(args: list[str], env: dict[str, str], *, timeout: float = 120) -> str:
    """Run ``darkroom ARGS`` and return its stdout; raises on a non-zero exit."""
    proc = subprocess.run([sys.executable, "-m", "darkroom.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"darkroom {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def create_key(env: dict[str, str], name: str) -> str:
    """A new API key made with the CLI: the secret is the last line of its output."""
    return run_cli(["keys", "create", "--name", name], env).strip().splitlines()[-1]


class Process:
    """A darkroom subprocess whose output goes to a log file (read it when a test fails)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Process":
        log = open(self.log_path, "ab")
        # A new session so that kill() reaches the serve process's worker child too.
        self.proc = subprocess.Popen([sys.executable, "-m", "darkroom.cli", *self.args], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the process group and wait."""
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, no clean-up."""
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


class Server(Process):
    """``darkroom serve`` on a free loopback port."""

    def __init__(self, env: dict[str, str], log_path: Path, *, worker: bool = True, port: int | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.port = port or free_port()
        args = ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if not worker:
            args.append("--no-worker")
        super().__init__(args + (extra_args or []), env, log_path)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> "Server":
        super().start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"darkroom serve exited early:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"darkroom serve did not become healthy in {timeout} s:\n{self.log_tail()}")


def wait_for(predicate, *, timeout: float = 120, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; returns that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
