"""Use cases: what every API dialect calls. Synchronous; the API runs it in a thread pool.

The service validates against the model registry (the one source of truth for
parameters), keeps input images out of the database, and never talks HTTP.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from darkroom.domain import ApiKey, Page, Request, Status
from darkroom.engines.params import INPUT_IMAGE_FIELDS, decode_base64_image, validate_payload
from darkroom.engines.registry import Registry, load_registry
from darkroom.errors import InvalidField, NotFound, RequestNotFound, Unauthorized
from darkroom.imaging import CONTENT_TYPES, decode_image
from darkroom.settings import Settings
from darkroom.signing import UrlSigner
from darkroom.storage import BlobStore, LocalBlobStore
from darkroom.store import Store

log = logging.getLogger(__name__)

BLOB_PREFIX = "darkroom-blob:"
MAX_PAGE = 100


def result_key(request_id: str, index: int, output_format: str) -> str:
    return f"results/{request_id}/{index}.{output_format}"


def input_key(upload_id: str, field: str) -> str:
    return f"inputs/{upload_id}/{field}"


@dataclass
class Service:
    settings: Settings
    store: Store
    registry: Registry
    blobs: BlobStore
    signer: UrlSigner

    @classmethod
    def from_settings(cls, settings: Settings, *, store: Store | None = None) -> "Service":
        """Wire the service from settings: the store (migrated), registry, blobs and signer."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if store is None:
            store = Store.from_settings(settings)
            store.migrate()
        return cls(
            settings=settings,
            store=store,
            registry=load_registry(settings.resolved_models_file()),
            blobs=LocalBlobStore(settings.data_dir / "blobs"),
            signer=UrlSigner(settings.resolved_secret_key(), settings.media_url_ttl_s),
        )

    # -- keys ---------------------------------------------------------------------------

    def authenticate(self, secret: str | None) -> ApiKey:
        """The active key for ``secret``; raises Unauthorized."""
        if not secret:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        key = self.store.authenticate(secret.strip())
        if key is None:
            raise Unauthorized("invalid or revoked API key")
        return key

    # -- requests -----------------------------------------------------------------------

    def submit(self, key: ApiKey, model: Any, payload: Any) -> Request:
        """Validate and enqueue. Raises InvalidField / ModelNotFound and stores nothing then."""
        if not isinstance(model, str) or not model:
            raise InvalidField("model", "must be a model id string")
        spec = self.registry.get(model)
        clean = validate_payload(list(spec.parameters), payload, max_image_bytes=self.settings.max_image_bytes)
        clean = self._stash_input_images(clean)
        request = self.store.insert_request(key.id, spec.id, clean)
        log.info("request %s queued for %s by key %s", request.id, spec.id, key.name)
        return request

    def _stash_input_images(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Move base64 input images to blob storage; the row keeps a reference.

        Images are decoded first so an unreadable one is a 422 before anything is stored.
        """
        decoded: dict[str, bytes] = {}
        for field in INPUT_IMAGE_FIELDS:
            value = payload.get(field)
            if isinstance(value, str) and not value.startswith(("http://", "https://")):
                raw = decode_base64_image(value, f"payload.{field}", self.settings.max_image_bytes)
                decode_image(raw, f"payload.{field}")
                decoded[field] = raw
        if not decoded:
            return payload
        upload_id = str(uuid.uuid4())
        out = dict(payload)
        for field, raw in decoded.items():
            blob = input_key(upload_id, field)
            self.blobs.put(blob, raw, "application/octet-stream")
            out[field] = BLOB_PREFIX + blob
        return out

    def get_request(self, key: ApiKey, request_id: str) -> Request:
        request = self.store.get_request(request_id, key_id=key.id)
        if request is None:
            raise RequestNotFound(f"no request {request_id!r}", field="request_id")
        return request

    def list_requests(
        self, key: ApiKey, *, model: str | None = None, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> Page:
        if status is not None:
            try:
                status = Status(status).value
            except ValueError as exc:
                raise InvalidField("status", f"must be one of {', '.join(s.value for s in Status)}") from exc
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidField("limit", f"must be between 1 and {MAX_PAGE}")
        if offset < 0:
            raise InvalidField("offset", "must be 0 or more")
        if model is not None:
            model = self.registry.get(model).id
        return self.store.list_requests(key.id, model=model, status=status, limit=limit, offset=offset)

    def cancel_request(self, key: ApiKey, request_id: str) -> Request:
        """Queued: cancelled at once. Processing: flagged; the worker stops at the next step."""
        request = self.store.cancel_request(request_id, key.id)
        log.info("cancel of %s asked by key %s: now %s", request_id, key.name, request.status)
        return request

    def queue_position(self, request: Request) -> int | None:
        if request.status != Status.QUEUED:
            return None
        return self.store.queue_position(request.id)

    # -- models -------------------------------------------------------------------------

    def model_record(self, model_id: str) -> dict[str, Any]:
        spec = self.registry.get(model_id)
        return spec.record(qworkers=self.store.active_workers(spec.id))

    def model_records(self) -> list[dict[str, Any]]:
        """Every model's record, the default model first."""
        ids = sorted(self.registry.ids(), key=lambda m: m != self.registry.default)
        return [self.model_record(m) for m in ids]

    # -- media --------------------------------------------------------------------------

    def signed_media_query(self, blob_key: str) -> str:
        expires, sig = self.signer.sign(blob_key)
        return f"exp={expires}&sig={sig}"

    def open_media(self, blob_key: str, expires: str | None, signature: str | None) -> tuple[bytes, str]:
        """Bytes and content type of a result; raises Forbidden on a bad signature."""
        self.signer.verify(blob_key, expires, signature)
        suffix = blob_key.rsplit(".", 1)[-1]
        try:
            return self.blobs.get(blob_key), CONTENT_TYPES.get(suffix, "application/octet-stream")
        except NotFound as exc:
            raise NotFound("result no longer exists", code="media_not_found") from exc
