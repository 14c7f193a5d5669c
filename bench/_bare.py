"""The bare baseline for ``bench.queue``: a FastAPI app whose one route returns ``{"hello": "world"}``,
served by ``uvicorn.run`` exactly as ``darkroom serve`` serves darkroom (one process, the same
``log_level``, so the same access log, the same default loop and HTTP parser).

    python -m bench._bare --port 8001 --log-level info
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
