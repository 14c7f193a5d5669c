"""What the multi-process wake-up tests run in child processes: ``python _wakeup_children.py ACTION ...``.

A script of its own, importing only ``darkroom.wakeup``, so a child starts in a fraction
of a second without pytest or the test modules.

Actions:
  notify URL CHANNEL PAYLOAD [DELAY_S]  sleep DELAY_S, notify, print the wall-clock time of the notify
  die-listening URL CHANNEL             listen, print the socket path, then SIGKILL ourselves
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from darkroom.wakeup import wakeup_for

SCRIPT = Path(__file__).resolve()


def spawn(*args: str) -> subprocess.Popen[str]:
    """Start this script in a fresh interpreter with ``args``."""
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, text=True)


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True, timeout=timeout
    )


def main(action: str, url: str, *rest: str) -> None:
    wakeup = wakeup_for(url)
    if action == "notify":
        channel, payload, *delay = rest
        time.sleep(float(delay[0]) if delay else 0.0)
        sent = time.time()
        wakeup.notify(channel, payload)
        print(sent, flush=True)
        wakeup.close()
    elif action == "die-listening":
        (channel,) = rest
        listener = wakeup.listen([channel])
        print(getattr(listener, "path", ""), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        raise SystemExit(f"unknown action {action}")


if __name__ == "__main__":
    main(*sys.argv[1:])
