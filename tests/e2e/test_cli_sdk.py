"""The CLI and the Python SDK against a real server."""

from __future__ import annotations

import asyncio
import io

import httpx
import pytest
from PIL import Image

from darkroom.client import AsyncClient, AuthenticationError, Client, InvalidRequest, NotFoundError, RequestFailed
from darkroom.testing.server import run_cli


def test_sdk_generate_download_list_and_errors(deployment) -> None:
    with Client(deployment.server.url, api_key=deployment.a.key) as client:
        updates = []
        done = client.generate("tiny", "a yellow heart", seed=3, output_format="png", on_update=updates.append)
        assert done.succeeded and done.outcome["seed"] == 3
        assert updates and updates[-1].status == "success"
        image = Image.open(io.BytesIO(client.download(done)))
        assert image.format == "PNG" and image.size == (1024, 1024)
        assert done.request_id in [r.request_id for r in client.list(model="tiny", limit=100)]
        assert client.models()[0]["model"] == "tiny"
        with pytest.raises(NotFoundError) as err:
            client.get("00000000-0000-0000-0000-000000000000")
        assert err.value.code == "request_not_found"
        with pytest.raises(InvalidRequest) as bad:
            client.submit("tiny", prompt="x", seed=-5)
        assert bad.value.field == "payload.seed"
        queued = client.submit("tiny-slow", prompt="x", steps=2000)
        client.cancel(queued)
        cancelled = client.wait(queued)
        assert cancelled.status == "cancelled" and cancelled.error_code == "cancelled"
        with pytest.raises(RequestFailed) as failed:
            client.download(cancelled)
        assert failed.value.code == "cancelled"
    with Client(deployment.server.url, api_key="dr_wrong") as client, pytest.raises(AuthenticationError):
        client.models()


def test_async_sdk_generate(deployment) -> None:
    async def main() -> bytes:
        async with AsyncClient(deployment.server.url, api_key=deployment.b.key) as client:
            done = await client.generate("tiny", "a purple ring", seed=9, aspect_ratio="16:9")
            return await client.download(done)

    image = Image.open(io.BytesIO(asyncio.run(main())))
    assert image.format == "JPEG" and image.size == (1360, 768)


def test_cli_generate_against_server(deployment, tmp_path) -> None:
    out = tmp_path / "cli.png"
    text = run_cli(["generate", "a red triangle", "-o", str(out), "--model", "tiny", "--seed", "11",
                    "--aspect-ratio", "9:16", "--url", deployment.server.url, "--key", deployment.a.key],
                   deployment.env)
    assert "seed 11" in text
    image = Image.open(out)
    assert image.format == "PNG" and image.size == (768, 1360)


def test_cli_models_and_key_revocation(deployment) -> None:
    listing = run_cli(["models"], deployment.env)
    assert "tiny " in listing and "available" in listing
    secret = run_cli(["keys", "create", "--name", "temp"], deployment.env).strip().splitlines()[-1]
    url = f"{deployment.server.url}/api/v1/ie/requestqueue/apikey/models"
    assert httpx.get(url, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert "temp" in run_cli(["keys", "list"], deployment.env)
    assert secret not in run_cli(["keys", "list"], deployment.env)
    run_cli(["keys", "revoke", "temp"], deployment.env)
    assert httpx.get(url, headers={"Authorization": f"Bearer {secret}"}).status_code == 401


def test_cli_generate_without_weights_says_so(tmp_path) -> None:
    import subprocess
    import sys

    from darkroom.testing.server import darkroom_env

    registry = tmp_path / "models.toml"
    registry.write_text('default = "ghost"\n[models.ghost]\npipeline = "flux"\npath = "ghost-weights"\n')
    proc = subprocess.run([sys.executable, "-m", "darkroom.cli", "generate", "a red circle", "-o",
                           str(tmp_path / "x.png")], env=darkroom_env(tmp_path / "data", registry),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "model ghost has no weights" in proc.stderr and "model_unavailable" in proc.stderr
    assert not (tmp_path / "x.png").exists()
