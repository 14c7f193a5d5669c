"""``darkroom migrate-store``: a one-machine deployment (SQLite, a local blobs folder) moved to
PostgreSQL and S3 (a real radosgw), keys, requests, webhook deliveries and images intact."""

from __future__ import annotations

from pathlib import Path

import pytest

from darkroom.domain import Status, SubmitOptions
from darkroom.storage import LocalBlobStore
from darkroom.store import Store
from darkroom.testing.server import darkroom_env, run_cli

pytestmark = [pytest.mark.postgres, pytest.mark.s3]


def test_a_sqlite_deployment_moves_to_postgresql_and_s3(tmp_path: Path, tiny_models: Path, pg_cluster,  # noqa: ANN001
                                                          s3_server) -> None:  # noqa: ANN001
    old_dir = tmp_path / "old"
    old = Store(f"sqlite:///{old_dir / 'darkroom.db'}")
    old_dir.mkdir()
    old.migrate()
    key, secret = old.create_key("alice")
    revoked, _ = old.create_key("gone")
    old.revoke_key(revoked.id)
    done = old.submit_request(key.id, "tiny", {"prompt": "x"}, options=SubmitOptions(
        webhook_url="https://example.com/hook")).request
    [claimed] = old.claim_batch("w", ["tiny"], 30, max_batch=1)
    blobs = LocalBlobStore(old_dir / "blobs")
    blobs.put(f"results/{done.id}/1-0.jpeg", b"jpeg bytes", "image/jpeg")
    old.finish_request(done.id, "w", {"media": [{"id": "0", "key": f"results/{done.id}/1-0.jpeg"}]})
    waiting = old.insert_request(key.id, "tiny", {"prompt": "still queued"})
    old.close()

    bucket = "migrated"
    env = darkroom_env(tmp_path / "new", tiny_models, DARKROOM_DATABASE_URL=pg_cluster.new_database(),
                       DARKROOM_STORAGE_URL=f"s3://{bucket}/p", DARKROOM_S3_ENDPOINT_URL=s3_server.endpoint_url,
                       DARKROOM_S3_REGION=s3_server.region, DARKROOM_S3_ACCESS_KEY_ID=s3_server.access_key,
                       DARKROOM_S3_SECRET_ACCESS_KEY=s3_server.secret_key)
    out = run_cli(["migrate-store", "--from", f"sqlite:///{old_dir / 'darkroom.db'}", "--blobs",
                   str(old_dir / "blobs")], env)
    assert "api_keys: 2 rows" in out and "requests: 2 rows" in out and "webhook_deliveries: 1 rows" in out
    assert "blobs: 1 files" in out

    new = Store(env["DARKROOM_DATABASE_URL"])
    assert new.authenticate(secret).id == key.id  # the same secret works
    assert [k.active for k in new.list_keys()] == [True, False]
    moved = new.get_request(done.id)
    assert moved.status == Status.SUCCESS and moved.outcome == {"media": [{"id": "0", "key": f"results/{done.id}/1-0.jpeg"}]}
    assert [d.request_id for d in new.list_webhook_deliveries(done.id)] == [done.id]
    assert new.get_request(waiting.id).status == Status.QUEUED  # and runs on the new workers
    fresh = new.insert_request(key.id, "tiny", {"prompt": "new"})
    assert fresh.seq > max(claimed.seq, waiting.seq)  # numbering continues after the copied rows
    body = s3_server.client().get_object(Bucket=bucket, Key=f"p/results/{done.id}/1-0.jpeg")["Body"].read()
    assert body == b"jpeg bytes"
    # Into a store that is no longer empty: refused, nothing written.
    again = run_cli_failing(["migrate-store", "--from", f"sqlite:///{old_dir / 'darkroom.db'}"], env)
    assert "already has rows" in again
    new.close()


def run_cli_failing(args: list[str], env: dict[str, str]) -> str:
    try:
        run_cli(args, env)
    except RuntimeError as exc:
        return str(exc)
    raise AssertionError("expected the command to fail")
