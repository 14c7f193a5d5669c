"""Blobs in an S3-compatible bucket (AWS S3, Ceph radosgw, MinIO, ...), under a key prefix.

``s3://bucket/prefix`` stores ``results/<id>/0.png`` as object ``prefix/results/<id>/0.png``.
One boto3 client is shared by every thread (boto3 clients are thread-safe). Requests use
boto3's ``standard`` retry mode; a put that still fails raises, and the worker's lease and
requeue take it from there. Results are handed to clients as presigned GET URLs
(``url_for``), so the bytes never pass through darkroom.

Needs the ``s3`` extra (``pip install 'darkroom[s3]'``: boto3).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from darkroom.errors import NotFound

# Error codes that mean "no such object/bucket" (HEAD answers carry only the HTTP status).
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (``bucket``, ``some/prefix``); the prefix may be empty."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket[/prefix] URL: {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"an s3:// storage URL takes no query or fragment: {url!r}")
    return parts.netloc, parts.path.strip("/")


class S3BlobStore:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        path_style: bool = True,
        max_attempts: int = 4,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        max_pool_connections: int = 32,
    ) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("S3 storage needs boto3: pip install 'darkroom[s3]'") from exc

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region = region
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if path_style else "auto"},
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            max_pool_connections=max_pool_connections,
        )
        # Unset credentials fall through to boto3's own chain (AWS_* variables, instance role).
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url or None, region_name=region or None,
            aws_access_key_id=access_key_id or None, aws_secret_access_key=secret_access_key or None,
            config=config,
        )  # fmt: skip

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> S3BlobStore:
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, **kwargs)

    def __repr__(self) -> str:
        return f"S3BlobStore(s3://{self.bucket}/{self.prefix})"

    def object_key(self, key: str) -> str:
        """The object name of blob ``key``: the prefix joined with the key (validated as LocalBlobStore does)."""
        path = PurePosixPath(key)
        if not key or path.is_absolute() or any(p in ("..", ".", "") for p in key.split("/")):
            raise NotFound(f"invalid blob key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    @staticmethod
    def _is_missing(exc: Exception) -> bool:
        from botocore.exceptions import ClientError

        if not isinstance(exc, ClientError):
            return False
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(error.get("Code")) in _MISSING or status == 404

    # -- the BlobStore protocol -------------------------------------------------------------

    def put(self, key: str, data: bytes, content_type: str) -> None:
        # S3 PUT is atomic and durable once it answers 200: readers see the old object or the new one.
        self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if self._is_missing(exc):
                raise NotFound(f"no blob {key!r}") from exc
            raise
        with response["Body"] as body:
            return body.read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except NotFound:
            return False
        except ClientError as exc:
            if self._is_missing(exc):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        from botocore.exceptions import ClientError

        try:
            # S3 answers 204 for a key that is not there too.
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except NotFound:
            pass
        except ClientError as exc:
            if not self._is_missing(exc):
                raise

    def url_for(self, key: str, ttl_s: int, *, mutable: bool = False) -> str | None:
        """A presigned GET URL: clients download results from the bucket directly. ``mutable``
        (previews, overwritten in place): the answer carries ``Cache-Control: no-store``."""
        return self.presigned_url(key, ttl_s, cache_control="no-store" if mutable else None)

    # -- S3 only ----------------------------------------------------------------------------

    def presigned_url(self, key: str, ttl_s: int, *, cache_control: str | None = None) -> str:
        """A URL anyone can GET ``key`` with for ``ttl_s`` seconds (SigV4 query signing; no request
        is made). ``cache_control``: the Cache-Control header of the answer (a signed parameter)."""
        params = {"Bucket": self.bucket, "Key": self.object_key(key)}
        if cache_control:
            params["ResponseCacheControl"] = cache_control
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=int(ttl_s))

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (call once at startup). Idempotent across replicas."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if not self._is_missing(exc):
                raise
        if not self.region or self.region == "us-east-1":  # AWS rejects an explicit us-east-1 constraint
            self._create_bucket()
            return
        try:
            self._create_bucket(CreateBucketConfiguration={"LocationConstraint": self.region})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in (
                "InvalidLocationConstraint", "IllegalLocationConstraintException",
            ):  # fmt: skip
                raise
            # Servers other than AWS (radosgw's zonegroups, MinIO) may name regions differently.
            self._create_bucket()

    def _create_bucket(self, **kwargs: Any) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.create_bucket(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            # Another replica made it first (radosgw answers BucketAlreadyExists to the same owner).
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
