"""Use cases: what every API dialect calls. Synchronous; the API runs it in a thread pool.

The service validates against the model registry (the one source of truth for
parameters), keeps input images out of the database, and never talks HTTP.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from typing import Any

from darkroom.domain import ApiKey, Page, Priority, Request, Status, SubmitOptions
from darkroom.engines.params import INPUT_IMAGE_FIELDS, decode_base64_image, validate_payload
from darkroom.engines.registry import Registry, load_registry
from darkroom.errors import Forbidden, InvalidField, NotFound, RequestNotFound, Unauthorized
from darkroom.imaging import CONTENT_TYPES, probe_image
from darkroom.netguard import NetGuard
from darkroom.settings import Settings
from darkroom.signing import UrlSigner
from darkroom.spec import build_spec
from darkroom.storage import BlobStore, blob_store_from_settings
from darkroom.store import Limits, Store, Submitted

log = logging.getLogger(__name__)

BLOB_PREFIX = "darkroom-blob:"
ENDED_CACHE_S = 60.0
ENDED_CACHE_SIZE = 10_000
MAX_PAGE = 100


def parse_priority(value: Any, field: str = "priority") -> Priority:
    """``high``, ``normal`` or ``low`` (case-insensitive); raises InvalidField."""
    if isinstance(value, str) and value.strip().upper() in Priority.__members__:
        return Priority[value.strip().upper()]
    raise InvalidField(field, "must be one of high, normal, low")


def _fingerprint(model: str, payload: Any, options: SubmitOptions) -> str:
    """What an idempotency key is bound to: the model, payload and request-level options."""
    body = {"model": model, "payload": payload, "priority": int(options.priority),
            "webhook_url": options.webhook_url, "webhook_secret": options.webhook_secret}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def result_key(request_id: str, attempt: int, index: int, output_format: str) -> str:
    """Where attempt ``attempt``'s image ``index`` of a request is stored. The attempt is in
    the key so that a worker that lost its lease (a zombie) can never overwrite, or delete,
    the image of the worker that owns the request now."""
    return f"results/{request_id}/{attempt}-{index}.{output_format}"


def preview_key(request_id: str, attempt: int) -> str:
    """Where a request's latest step preview (JPEG) is kept while attempt ``attempt`` runs."""
    return f"previews/{request_id}-{attempt}.jpeg"


def input_key(upload_id: str, field: str) -> str:
    return f"inputs/{upload_id}/{field}"


@dataclass
class Service:
    settings: Settings
    store: Store
    registry: Registry
    blobs: BlobStore
    signer: UrlSigner
    guard: NetGuard
    # secret digest -> (key, monotonic expiry): a status read should not cost a key lookup each time.
    _keys: dict[str, tuple[ApiKey, float]] = dataclass_field(default_factory=dict, repr=False)
    # request id -> (ended request, monotonic expiry): see ended_request.
    _ended: dict[str, tuple[Request, float]] = dataclass_field(default_factory=dict, repr=False)

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
            registry=load_registry(settings.resolved_models_file(), aliases=settings.aliases),
            blobs=blob_store_from_settings(settings),
            signer=UrlSigner(settings.resolved_secret_key(), settings.media_url_ttl_s),
            guard=NetGuard.from_settings(settings),
        )

    # -- keys ---------------------------------------------------------------------------

    def authenticate(self, secret: str | None) -> ApiKey:
        """The active key for ``secret``; raises Unauthorized.

        A key found is remembered for ``auth_cache_s`` (only keys that exist: unknown
        secrets always go to the store). A revoke or a limit change signals every API
        process (``darkroom.wakeup.KEYS``), which forgets the key at once; were that signal
        lost, the change would still take effect within ``auth_cache_s``.
        """
        key = self.cached_key(secret)
        if key is not None:
            return key
        if not secret:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        key = self.store.authenticate(secret.strip())
        if key is None:
            raise Unauthorized("invalid or revoked API key")
        if self.settings.auth_cache_s > 0:
            if len(self._keys) > 10_000:  # bounded: many keys in a short time just stop being cached
                self._keys.clear()
            self._keys[_digest(secret.strip())] = (key, time.monotonic() + self.settings.auth_cache_s)
        return key

    def forget_keys(self, key_id: str = "") -> None:
        """Drop remembered keys (one, or all with ""): it was revoked or its limits changed."""
        if not key_id:
            self._keys.clear()
            return
        for digest, (key, _) in list(self._keys.items()):
            if key.id == key_id:
                self._keys.pop(digest, None)

    def cached_key(self, secret: str | None) -> ApiKey | None:
        """The key for ``secret`` if it was checked within ``auth_cache_s``; no I/O."""
        if not secret or not self._keys:
            return None
        hit = self._keys.get(_digest(secret.strip()))
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    # -- requests -----------------------------------------------------------------------

    def submit(self, key: ApiKey, model: Any, payload: Any, options: SubmitOptions | None = None) -> Submitted:
        """Validate and enqueue. Stores nothing when it raises.

        ``payload`` may carry the request-level fields ``priority``, ``webhook_url`` and
        ``webhook_secret`` (as the BFL dialect sends them); they are taken out before the
        payload is validated and override ``options``. Raises InvalidField, ModelNotFound,
        Forbidden (``high`` priority without the grant), Conflict (idempotency key reused
        with another body), RateLimited.
        """
        options = options or SubmitOptions()
        if not isinstance(model, str) or not model:
            raise InvalidField("model", "must be a model id string")
        if isinstance(payload, dict):
            payload, options = self._take_envelope(payload, options)
        spec = self.registry.get(model)
        clean = validate_payload(list(spec.parameters), payload, max_image_bytes=self.settings.max_image_bytes)
        if options.priority == Priority.HIGH and not key.allow_high_priority:
            raise Forbidden("this key may not use priority 'high' (the operator grants it per key)",
                            code="priority_not_allowed", field="priority")
        if options.webhook_url:
            self.check_outbound_url(options.webhook_url, "webhook_url")
        for field in INPUT_IMAGE_FIELDS:
            value = clean.get(field)
            if isinstance(value, str) and value.startswith(("http://", "https://")):
                self.check_outbound_url(value, f"payload.{field}")
        request_hash = _fingerprint(spec.id, payload, options)
        limits = Limits(
            rate_per_minute=key.rate_per_minute or self.settings.default_rate_per_minute,
            max_in_flight=key.max_in_flight or self.settings.default_max_in_flight,
        )
        if options.idempotency_key:
            # A replay must not re-upload images or count against limits: look first.
            replay = self.store.submit_request(key.id, spec.id, {}, options=options, request_hash=request_hash,
                                               limits=None, only_existing=True)
            if replay is not None:
                return replay
        clean, image_sizes = self._stash_input_images(clean)
        generation = build_spec(spec.id, clean, image_sizes=image_sizes)
        submitted = self.store.submit_request(key.id, spec.id, clean, options=options, request_hash=request_hash,
                                              limits=limits, spec=generation)
        if submitted.created:
            log.info("request %s queued for %s by key %s", submitted.request.id, spec.id, key.name)
        return submitted

    def check_outbound_url(self, url: str, field: str) -> None:
        """Refuse URLs darkroom must not call (SSRF guard, see ``darkroom.netguard``): not
        http(s), or a host that resolves to a non-public address the operator has not
        allow-listed. Raises InvalidField naming ``field`` (code ``url_not_allowed``).

        This is the early answer at submit time; the HTTP clients check again when they
        connect (DNS may have changed by then).
        """
        self.guard.check_url(url, field)

    @staticmethod
    def _take_envelope(payload: dict[str, Any], options: SubmitOptions) -> tuple[dict[str, Any], SubmitOptions]:
        payload = dict(payload)
        changes: dict[str, Any] = {}
        if "priority" in payload:
            changes["priority"] = parse_priority(payload.pop("priority"), "payload.priority")
        for name in ("webhook_url", "webhook_secret"):
            if name in payload:
                value = payload.pop(name)
                if value is not None and not isinstance(value, str):
                    raise InvalidField(f"payload.{name}", "must be a string")
                changes[name] = value
        return payload, replace(options, **changes) if changes else options

    def _stash_input_images(self, payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[int, int]]]:
        """Move base64 input images to blob storage; the row keeps a reference. Returns the
        payload and each stored image's size (its batch shape).

        Images are decoded first so an unreadable one is a 422 before anything is stored.
        """
        decoded: dict[str, bytes] = {}
        sizes: dict[str, tuple[int, int]] = {}
        for field in INPUT_IMAGE_FIELDS:
            value = payload.get(field)
            if isinstance(value, str) and not value.startswith(("http://", "https://")):
                raw = decode_base64_image(value, f"payload.{field}", self.settings.max_image_bytes)
                # The header only: the API process never decodes an image (see imaging.probe_image).
                sizes[field] = probe_image(raw, f"payload.{field}", max_pixels=self.settings.max_image_pixels)
                decoded[field] = raw
        if not decoded:
            return payload, sizes
        upload_id = str(uuid.uuid4())
        out = dict(payload)
        for field, raw in decoded.items():
            blob = input_key(upload_id, field)
            self.blobs.put(blob, raw, "application/octet-stream")
            out[field] = BLOB_PREFIX + blob
        return out, sizes

    def get_request(self, key: ApiKey, request_id: str) -> Request:
        request = self.ended_request(key, request_id)
        if request is not None:
            return request
        request = self.store.get_request(request_id, key_id=key.id)
        if request is None:
            raise RequestNotFound(f"no request {request_id!r}", field="request_id")
        if request.status.is_terminal and not request.webhook_url:
            self._remember(request)
        return request

    def ended_request(self, key: ApiKey, request_id: str) -> Request | None:
        """The request if it ended and was read within ``ENDED_CACHE_S`` (no I/O); else None.

        An ended request never changes again (``domain.TRANSITIONS``), so a client polling a
        finished request, or many clients reading one, cost no database read. Requests with
        a webhook are not kept: their deliveries' state still moves. Retention may delete a
        request; a cached copy lives ``ENDED_CACHE_S`` at most.
        """
        hit = self._ended.get(request_id)
        if hit is None or hit[1] < time.monotonic() or hit[0].key_id != key.id:
            return None
        return hit[0]

    def _remember(self, request: Request) -> None:
        if len(self._ended) >= ENDED_CACHE_SIZE:
            self._ended.clear()  # bounded; the next reads refill it
        self._ended[request.id] = (request, time.monotonic() + ENDED_CACHE_S)

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
