"""S3BlobStore against a real S3 server (Ceph radosgw, the ``s3_server`` fixture), and a real
``darkroom serve`` keeping its inputs and results in a bucket. No mock S3 anywhere."""

from __future__ import annotations

import base64
import io
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from botocore.exceptions import ClientError
from PIL import Image

from darkroom.errors import NotFound
from darkroom.settings import Settings
from darkroom.storage import LocalBlobStore, blob_store_from_settings
from darkroom.storage.s3 import S3BlobStore, parse_s3_url
from darkroom.testing.api import start_deployment
from darkroom.testing.server import wait_for


def _bucket() -> str:
    return f"t-{uuid.uuid4().hex[:20]}"


def _store(server, bucket: str, prefix: str = "", *, ensure: bool = True, **kwargs) -> S3BlobStore:
    options = {"endpoint_url": server.endpoint_url, "region": server.region, "access_key_id": server.access_key,
               "secret_access_key": server.secret_key}
    options.update(kwargs)
    store = S3BlobStore(bucket, prefix, **options)
    if ensure:
        store.ensure_bucket()
    return store


@pytest.fixture()
def s3_store(s3_server) -> S3BlobStore:
    return _store(s3_server, _bucket(), "darkroom/test")


# -- the store --------------------------------------------------------------------------------


@pytest.mark.s3
def test_round_trip(s3_store: S3BlobStore) -> None:
    key = "results/abc/0.png"
    assert not s3_store.exists(key)
    s3_store.put(key, b"\x89PNG-bytes", "image/png")
    assert s3_store.exists(key)
    assert s3_store.get(key) == b"\x89PNG-bytes"
    head = s3_store.client.head_object(Bucket=s3_store.bucket, Key="darkroom/test/results/abc/0.png")
    assert head["ContentType"] == "image/png"
    s3_store.put(key, b"second", "image/png")  # overwrite in place (previews do)
    assert s3_store.get(key) == b"second"
    s3_store.delete(key)
    assert not s3_store.exists(key)
    s3_store.delete(key)  # already gone: no error


@pytest.mark.s3
def test_missing_and_invalid_keys_are_not_found(s3_store: S3BlobStore) -> None:
    with pytest.raises(NotFound):
        s3_store.get("results/nothing/0.png")
    assert s3_store.exists("results/nothing/0.png") is False
    s3_store.delete("results/nothing/0.png")
    for bad in ("", "/abs", "a/../b", "a//b", "./a"):
        with pytest.raises(NotFound):
            s3_store.get(bad)
        with pytest.raises(NotFound):
            s3_store.put(bad, b"x", "application/octet-stream")
        assert s3_store.exists(bad) is False
        s3_store.delete(bad)


@pytest.mark.s3
def test_prefixes_isolate_stores_in_one_bucket(s3_server) -> None:
    bucket = _bucket()
    one, two, bare = _store(s3_server, bucket, "one"), _store(s3_server, bucket, "/two/"), _store(s3_server, bucket)
    one.put("k/x.png", b"one", "image/png")
    two.put("k/x.png", b"two", "image/png")
    assert (one.get("k/x.png"), two.get("k/x.png")) == (b"one", b"two")
    assert not bare.exists("k/x.png")
    assert bare.get("one/k/x.png") == b"one"  # the prefix is just the start of the object name
    listed = one.client.list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in listed) == ["one/k/x.png", "two/k/x.png"]
    one.delete("k/x.png")
    assert two.get("k/x.png") == b"two"


@pytest.mark.s3
def test_presigned_url_downloads_with_plain_http_and_expires(s3_store: S3BlobStore, s3_server) -> None:
    s3_store.put("results/r/0.jpeg", b"jpeg-bytes", "image/jpeg")
    url = s3_store.presigned_url("results/r/0.jpeg", 600)
    assert s3_store.url_for("results/r/0.jpeg", 600).split("?")[0] == url.split("?")[0]
    assert url.startswith(f"{s3_server.endpoint_url}/{s3_store.bucket}/darkroom/test/results/r/0.jpeg?")
    assert "X-Amz-Signature=" in url
    resp = httpx.get(url, timeout=10)
    assert resp.status_code == 200
    assert resp.content == b"jpeg-bytes"
    assert resp.headers["content-type"] == "image/jpeg"
    # Expiry: a URL that lives 1 s, fetched only once it is surely past (a busy machine can take
    # longer than 1 s between signing and fetching, so the live fetch above uses a long-lived URL).
    short = s3_store.presigned_url("results/r/0.jpeg", 1)
    time.sleep(2.5)
    assert httpx.get(short, timeout=10).status_code == 403
    # Unsigned: no access.
    assert httpx.get(url.split("?")[0], timeout=10).status_code == 403


@pytest.mark.s3
def test_mutable_url_tells_caches_not_to_keep_it(s3_store: S3BlobStore) -> None:
    s3_store.put("previews/r-1.jpeg", b"step-4", "image/jpeg")
    url = s3_store.url_for("previews/r-1.jpeg", 60, mutable=True)
    assert url is not None
    resp = httpx.get(url, timeout=10)
    assert (resp.status_code, resp.headers.get("cache-control")) == (200, "no-store")
    # A presigned URL takes no extra parameter (it is signed): why previews do not get &step=.
    assert httpx.get(url + "&step=4", timeout=10).status_code == 403


@pytest.mark.s3
def test_concurrent_puts_from_threads_share_one_client(s3_store: S3BlobStore) -> None:
    def put(i: int) -> None:
        s3_store.put(f"results/{i % 8}/{i}.png", f"blob-{i}".encode() * 100, "image/png")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(128)))
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda i: s3_store.get(f"results/{i % 8}/{i}.png"), range(128)))
    assert got == [f"blob-{i}".encode() * 100 for i in range(128)]


@pytest.mark.s3
def test_ensure_bucket_creates_once_and_is_idempotent(s3_server) -> None:
    bucket = _bucket()
    store = _store(s3_server, bucket, "p", ensure=False)
    with pytest.raises(ClientError):
        store.put("a.png", b"x", "image/png")  # no bucket yet: a put that fails raises
    with ThreadPoolExecutor(4) as pool:  # replicas starting together
        list(pool.map(lambda _: _store(s3_server, bucket, "p", ensure=False).ensure_bucket(), range(4)))
    store.ensure_bucket()
    store.put("a.png", b"x", "image/png")
    assert store.get("a.png") == b"x"


@pytest.mark.s3
def test_ensure_bucket_with_a_region_the_server_names_differently(s3_server) -> None:
    # radosgw answers InvalidLocationConstraint to an AWS region name it has no zonegroup for.
    store = _store(s3_server, _bucket(), region="eu-west-1", ensure=False)
    store.ensure_bucket()
    store.put("a.png", b"x", "image/png")
    assert httpx.get(store.url_for("a.png", 60), timeout=10).content == b"x"


@pytest.mark.s3
def test_a_rejected_put_raises(s3_server) -> None:
    bucket = _bucket()
    _store(s3_server, bucket)
    wrong = _store(s3_server, bucket, ensure=False, secret_access_key="not-the-secret", max_attempts=2)
    with pytest.raises(ClientError) as caught:
        wrong.put("a.png", b"x", "image/png")
    assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


@pytest.mark.s3
def test_blob_store_from_settings_s3(s3_server, tmp_path: Path) -> None:
    bucket = _bucket()
    settings = Settings(
        data_dir=tmp_path, storage_url=f"s3://{bucket}/deploy/a", s3_endpoint_url=s3_server.endpoint_url,
        s3_region=s3_server.region, s3_access_key_id=s3_server.access_key, s3_secret_access_key=s3_server.secret_key,
    )  # fmt: skip
    store = blob_store_from_settings(settings)
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix) == (bucket, "deploy/a")
    store.put("x.png", b"x", "image/png")  # the bucket was created at startup
    assert store.url_for("x.png", 60).startswith(f"{s3_server.endpoint_url}/{bucket}/deploy/a/x.png?")
    assert not (tmp_path / "blobs").exists()


# -- no server needed ---------------------------------------------------------------------------


def test_blob_store_from_settings_local(tmp_path: Path) -> None:
    default = blob_store_from_settings(Settings(data_dir=tmp_path))
    assert isinstance(default, LocalBlobStore) and default.root == (tmp_path / "blobs").resolve()
    assert default.url_for("results/x/0.png", 60) is None
    folder = blob_store_from_settings(Settings(data_dir=tmp_path, storage_url=f"file://{tmp_path}/elsewhere"))
    assert isinstance(folder, LocalBlobStore) and folder.root == (tmp_path / "elsewhere").resolve()
    for bad in ("ftp://x/y", "/plain/path", "file://host/path"):
        with pytest.raises(ValueError):
            blob_store_from_settings(Settings(data_dir=tmp_path, storage_url=bad))


def test_parse_s3_url() -> None:
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b")
    for bad in ("s3:///nobucket", "http://bucket/x", "s3://bucket/x?y=1"):
        with pytest.raises(ValueError):
            parse_s3_url(bad)


# -- a real darkroom serve on S3 ----------------------------------------------------------------


def _png_b64(size: tuple[int, int] = (64, 64)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.s3
def test_serve_keeps_inputs_and_results_in_s3(s3_server, tiny_models: Path, tmp_path: Path) -> None:
    bucket, prefix = _bucket(), "darkroom/e2e"
    dep = start_deployment(
        tmp_path, tiny_models,
        DARKROOM_STORAGE_URL=f"s3://{bucket}/{prefix}",
        DARKROOM_S3_ENDPOINT_URL=s3_server.endpoint_url,
        DARKROOM_S3_REGION=s3_server.region,
        DARKROOM_S3_ACCESS_KEY_ID=s3_server.access_key,
        DARKROOM_S3_SECRET_ACCESS_KEY=s3_server.secret_key,
        DARKROOM_PREVIEW_EVERY_STEPS="1",
    )  # fmt: skip
    try:
        api = dep.a
        rgw = httpx.URL(s3_server.endpoint_url)
        objects = _store(s3_server, bucket, prefix, ensure=False)  # the bucket: made by serve at startup

        # Text to image: the result URL is a presigned radosgw URL, and the object is in the bucket.
        final = api.wait(api.submit(prompt="a red circle", seed=3, output_format="png")["request_id"], timeout=90)
        assert final["status"] == "success", final
        url = final["outcome"]["media_urls"][0]["url"]
        parsed = urlsplit(url)
        assert (parsed.hostname, parsed.port) == (rgw.host, rgw.port)
        assert parsed.path.startswith(f"/{bucket}/{prefix}/results/") and "X-Amz-Signature=" in parsed.query
        resp = httpx.get(url, timeout=30)
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(resp.content)).size == (final["outcome"]["width"], final["outcome"]["height"])
        key = parsed.path[len(f"/{bucket}/{prefix}/"):]
        assert objects.get(key) == resp.content

        # The BFL dialect hands out the same kind of URL.
        bfl = httpx.get(f"{dep.server.url}/v1/get_result", params={"id": final["request_id"]},
                        headers={"x-key": api.key}, timeout=30).json()
        assert bfl["status"] == "Ready", bfl
        assert bfl["result"]["sample"].startswith(f"{s3_server.endpoint_url}/{bucket}/{prefix}/{key}?")
        assert httpx.get(bfl["result"]["sample"], timeout=30).content == resp.content

        # An input image (base64) is stored in the bucket too, and the edit reads it from there.
        edit = api.submit("tiny-edit", prompt="make it blue", input_image=_png_b64(), seed=1)
        edited = api.wait(edit["request_id"], timeout=90)
        assert edited["status"] == "success", edited
        ref = edited["payload"]["input_image"]
        assert ref.startswith("darkroom-blob:inputs/")
        assert objects.exists(ref[len("darkroom-blob:"):])
        assert httpx.get(edited["outcome"]["media_urls"][0]["url"], timeout=30).status_code == 200

        # A step preview while a request runs: a presigned URL that caches must not keep.
        slow = api.submit("tiny-slow", prompt="a slow circle", steps=400)["request_id"]
        status = wait_for(lambda: (s := api.status(slow))["preview"] and s, timeout=60, interval=0.2,
                          what="a preview")
        preview = httpx.get(status["preview"]["url"], timeout=30)
        assert status["preview"]["url"].startswith(f"{s3_server.endpoint_url}/{bucket}/{prefix}/previews/")
        assert (preview.status_code, preview.headers["content-type"]) == (200, "image/jpeg")
        assert preview.headers["cache-control"] == "no-store"
        assert api.post(f"/requests/{slow}/cancel").status_code == 200

        # Nothing went to the local folder.
        assert not (dep.data_dir / "blobs").exists()
    finally:
        dep.server.stop()
