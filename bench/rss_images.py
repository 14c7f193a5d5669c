"""API and worker peak RSS under hostile input images: small bodies whose headers declare huge
images, 40 at once, against a real ``darkroom serve`` (API and its worker child, darkroom-mini).

    python -m bench.rss_images [--concurrency 40] [--keep]

Phases, in one run, each against the same processes:

1. idle: both processes started, the worker loaded; RSS of each.
2. normal: 40 concurrent edits of a small valid image (the baseline a deployment must afford).
3. hostile, base64: 40 concurrent submits cycling a 913-byte-class JPEG declaring 9000 x 9000,
   PNGs of a few hundred bytes declaring 12000 x 12000 and 20000 x 20000, and a JPEG declaring
   8000 x 8000 (under the 64 MP limit, truncated): the API must refuse or pass them from their
   headers, never decoding one.
4. hostile, by URL: the same images fetched by the worker (``input_image`` as a loopback URL).

Peak RSS is each process's VmHWM, reset (``/proc/PID/clear_refs``) at the start of each phase;
"after" is its VmRSS once the phase has ended. Ratios: hostile peak / normal peak, after / idle.
Writes bench/results/rss_images.json and prints a table.
"""

from __future__ import annotations

import argparse
import base64
import http.server
import io
import json
import struct
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw

from bench._harness import (API, MODEL, REPO, code_under_test, descendants, log, machine, make_workdir,
                            models_file, now_utc, proc_status_kb, remove_workdir)
from darkroom.testing.server import Server, create_key, darkroom_env, wait_for

RESULTS = REPO / "bench" / "results" / "rss_images.json"
STEPS = 2  # the engine's share is not what is measured here


# -- the images ------------------------------------------------------------------------------

def normal_png() -> bytes:
    """A small valid edit input: 256 x 256 shapes."""
    image = Image.new("RGB", (256, 256), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 40, 140, 140), fill="red")
    draw.rectangle((150, 120, 230, 220), fill="blue")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_declaring(width: int, height: int) -> bytes:
    """A tiny JPEG whose frame header (SOF0) declares ``width`` x ``height``: a valid start, a
    truncated scan."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "gray").save(buf, format="JPEG", quality=50)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def png_declaring(width: int, height: int) -> bytes:
    """A PNG of a few hundred bytes whose IHDR declares ``width`` x ``height`` (RGB, 8 bits): the
    first rows of zeros, deflated, then the end."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    deflate = zlib.compressobj(9)
    rows = deflate.compress(b"\0" * (1 + 3 * width) * 8) + deflate.flush(zlib.Z_SYNC_FLUSH)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def hostile_images() -> dict[str, bytes]:
    return {"jpeg 9000x9000": jpeg_declaring(9000, 9000), "png 12000x12000": png_declaring(12000, 12000),
            "png 20000x20000": png_declaring(20000, 20000), "jpeg 8000x8000 (under the limit)":
            jpeg_declaring(8000, 8000)}


class ImageHost:
    """Serves the hostile images on loopback, for ``input_image`` URLs."""

    def __init__(self, images: dict[str, bytes]) -> None:
        files = {f"/{i}": data for i, data in enumerate(images.values())}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                body = files.get(self.path, b"")
                self.send_response(200 if body else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.urls = [f"http://127.0.0.1:{self.server.server_address[1]}{p}" for p in files]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


# -- memory ----------------------------------------------------------------------------------

def rss_mib(pid: int) -> dict[str, float]:
    status = proc_status_kb(pid)
    return {"rss": round(status.get("VmRSS", 0) / 1024, 1), "peak": round(status.get("VmHWM", 0) / 1024, 1)}


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


# -- the run ---------------------------------------------------------------------------------

def submit_all(url: str, key: str, inputs: list[str], concurrency: int) -> list[httpx.Response]:
    """``inputs`` (base64 or URLs) as edits, ``concurrency`` at once."""
    def one(image: str) -> httpx.Response:
        body = {"model": MODEL, "payload": {"prompt": "make the circle green", "input_image": image,
                                             "steps": STEPS, "seed": 1}}
        return httpx.post(f"{url}{API}/requests", json=body, headers={"Authorization": f"Bearer {key}"},
                          timeout=300)

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, inputs))


def wait_ended(url: str, key: str, ids: list[str]) -> dict[str, int]:
    """Wait for every request to end; how many ended in each status (and error code)."""
    outcome: dict[str, int] = {}
    with httpx.Client(base_url=url + API, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        for request_id in ids:
            status = wait_for(lambda: (s := client.get(f"/requests/{request_id}").json())["status"]
                              in ("success", "failed", "cancelled") and s, timeout=1800, interval=0.2,
                              what=f"{request_id} to end")
            code = status["status"] + ((" " + status["outcome"]["error"]["code"]) if status["status"] == "failed"
                                       else "")
            outcome[code] = outcome.get(code, 0) + 1
    return outcome


def phase(name: str, pids: dict[str, int], action) -> dict[str, Any]:  # noqa: ANN001 - a callable
    for pid in pids.values():
        reset_peak(pid)
    log(f"phase {name}")
    started = time.monotonic()
    result = action()
    time.sleep(1.0)  # let freed memory return before "after" is read (a bench, not a test)
    return {"seconds": round(time.monotonic() - started, 1), **result,
            **{role: rss_mib(pid) for role, pid in pids.items()}}


def run(concurrency: int, keep: bool) -> dict[str, Any]:
    root = make_workdir(keep)
    env = darkroom_env(root / "data", models_file(), DARKROOM_URL_ALLOWLIST="127.0.0.1")
    key = create_key(env, "bench")
    server = Server(env, root / "serve.log").start()
    host = ImageHost(hostile_images())
    try:
        from darkroom.store import Store

        store = Store(f"sqlite:///{root / 'data' / 'darkroom.db'}")
        wait_for(store.list_workers, timeout=600, what="the worker to load darkroom-mini")
        children = descendants(server.pid)
        worker = next(p for p in children if "worker" in Path(f"/proc/{p}/cmdline").read_text())
        pids = {"api": server.pid, "worker": worker}
        time.sleep(1.0)
        idle = {role: rss_mib(pid) for role, pid in pids.items()}

        normal = base64.b64encode(normal_png()).decode()

        def normal_phase() -> dict[str, Any]:
            answers = submit_all(server.url, key, [normal] * concurrency, concurrency)
            ids = [r.json()["request_id"] for r in answers if r.status_code == 200]
            return {"submitted": len(answers), "accepted": len(ids), "ended": wait_ended(server.url, key, ids)}

        images = hostile_images()
        encoded = [base64.b64encode(data).decode() for data in images.values()]

        def hostile_base64() -> dict[str, Any]:
            answers = submit_all(server.url, key, [encoded[i % len(encoded)] for i in range(concurrency)],
                                 concurrency)
            codes: dict[str, int] = {}
            ids = []
            for r in answers:
                label = f"{r.status_code} " + (r.json().get("error", {}).get("code", "") if r.status_code != 200
                                               else "accepted")
                codes[label] = codes.get(label, 0) + 1
                if r.status_code == 200:
                    ids.append(r.json()["request_id"])
            return {"answers": codes, "ended": wait_ended(server.url, key, ids)}

        def hostile_url() -> dict[str, Any]:
            answers = submit_all(server.url, key, [host.urls[i % len(host.urls)] for i in range(concurrency)],
                                 concurrency)
            ids = [r.json()["request_id"] for r in answers if r.status_code == 200]
            return {"accepted": len(ids), "ended": wait_ended(server.url, key, ids)}

        phases = {"normal": phase("normal", pids, normal_phase),
                  "hostile_base64": phase("hostile, base64", pids, hostile_base64),
                  "hostile_url": phase("hostile, by URL", pids, hostile_url)}
    finally:
        host.stop()
        server.stop()
        remove_workdir(root, keep)

    ratios = {}
    for role in ("api", "worker"):
        base_peak = phases["normal"][role]["peak"]
        for name in ("hostile_base64", "hostile_url"):
            ratios[f"{role} peak, {name} / normal"] = round(phases[name][role]["peak"] / base_peak, 2)
            ratios[f"{role} after, {name} / idle"] = round(phases[name][role]["rss"] / idle[role]["rss"], 2)
    return {"when": now_utc(), "machine": machine(), "code": code_under_test(None), "concurrency": concurrency,
            "model": MODEL, "steps": STEPS, "images": {name: len(data) for name, data in images.items()},
            "idle": idle, "phases": phases, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=40)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, data)")
    args = parser.parse_args()
    result = run(args.concurrency, args.keep)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'':28} {'API MiB':>10} {'worker MiB':>11}")
    print(f"{'idle':28} {result['idle']['api']['rss']:>10} {result['idle']['worker']['rss']:>11}")
    for name, figures in result["phases"].items():
        print(f"{name + ' peak':28} {figures['api']['peak']:>10} {figures['worker']['peak']:>11}")
        print(f"{name + ' after':28} {figures['api']['rss']:>10} {figures['worker']['rss']:>11}")
    for name, value in result["ratios"].items():
        print(f"{name:40} {value:.2f}x")
    print(f"wrote {RESULTS.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
