"""The one settings object.

Built once at an edge (the CLI entry point, ``create_app(settings)``, a test) and
passed down. Nothing below this module reads the environment.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The registry shipped with the source tree: <repo>/models/models.toml.
_SOURCE_TREE_MODELS = Path(__file__).resolve().parents[2] / "models" / "models.toml"


class Settings(BaseSettings):
    """Every knob darkroom has. Environment variables use the ``DARKROOM_`` prefix."""

    model_config = SettingsConfigDict(env_prefix="DARKROOM_", extra="ignore")

    data_dir: Path = Field(Path("darkroom-data"), description="Database, results and secrets live here.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data_dir.")
    models_file: Path | None = Field(None, description="Model registry (TOML); default models/models.toml.")
    aliases: list[str] = Field(
        default_factory=list, description="Extra model names, each NAME=MODEL (e.g. flux-kontext-pro=darkroom-mini); "
                                          "env: a JSON list. None by default: a name must not claim a model it is not.")
    public_url: str | None = Field(
        None, description="Base URL used in result links; default: the URL the request came in on."
    )
    secret_key: str | None = Field(None, description="HMAC key for result URLs; default: generated in data_dir.")
    media_url_ttl_s: int = Field(3600, ge=1, description="Lifetime of signed result URLs.")
    retention_s: float | None = Field(
        None, gt=0, description="Delete requests (and their images, inputs and previews) this long after they "
                                "ended; default: keep them for ever.")
    max_body_bytes: int = Field(30 * 1024 * 1024, ge=1024, description="Largest accepted request body.")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest accepted input image.")
    max_image_pixels: int = Field(64 * 1024 * 1024, ge=64 * 64, description="Largest accepted input image in pixels "
                                                                         "(width x height, read from its header).")

    # The HTTP server's defences against slow or oversized requests: docs/operations.md
    header_read_timeout_s: float = Field(10.0, gt=0, description="A request's headers must arrive within this "
                                                                 "(408 and the connection closed).")
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="Largest request line and headers (431 beyond).")
    body_read_timeout_s: float = Field(30.0, gt=0, description="A request body must arrive within this, extended "
                                                               "by a second per body_min_rate_bytes_s received (408).")
    body_min_rate_bytes_s: int = Field(16 * 1024, ge=1, description="The slowest body upload that is never cut off "
                                                                   "(bytes per second).")
    max_connections: int | None = Field(1000, ge=1, description="Open connections (and requests in progress) "
                                                                "beyond which uvicorn answers 503; None: no limit.")

    # Database: the connection pool of each process (PostgreSQL only; SQLite keeps SQLAlchemy's defaults)
    db_pool_size: int = Field(5, ge=1, description="Connections a process keeps open to PostgreSQL.")
    db_max_overflow: int = Field(10, ge=0, description="Extra PostgreSQL connections a process may open under "
                                                       "load beyond db_pool_size (closed when returned).")
    db_pool_timeout_s: float = Field(30.0, gt=0, description="How long a call waits for a free PostgreSQL connection "
                                                             "before failing with 503 store_unavailable.")

    auth_cache_s: float = Field(
        5.0, ge=0, description="An API process remembers a checked key this long (0: never): a revoked key "
                               "or changed limits take effect within it.")

    # Per-key limits (a key's own setting, `darkroom keys update`, wins; None: unlimited)
    default_rate_per_minute: int | None = Field(None, ge=1, description="Requests a key may submit per minute.")
    default_max_in_flight: int | None = Field(None, ge=1, description="Requests a key may have queued or running.")

    # Worker
    lease_s: float = Field(30.0, gt=0, description="A claimed request is requeued if its lease lapses this long.")
    max_attempts: int = Field(3, ge=1, description="Claims of one request before it fails with worker_lost.")
    worker_dead_after_s: float = Field(
        15.0, gt=0, description="A worker that has not heartbeated (every 5 s) for this long is dead: its requests "
                                "are requeued without waiting for their leases.")
    worker_id: str | None = Field(None, description="This worker's id (default: host-pid-random); darkroom serve "
                                                    "names its child so it can requeue its requests if it dies.")
    poll_interval_s: float = Field(
        5.0, gt=0, description="Safety net: how often an idle worker looks for work although no wake-up came "
                               "(a submit wakes it at once; docs/operations.md).")
    max_batch: int | None = Field(
        None, ge=1, description="Most compatible requests a worker runs in one pipeline call "
                                "(default: 8 on CUDA, 4 on CPU; a model's max_batch option caps it).")
    batch_wait_ms: float | None = Field(
        None, ge=0, description="How long a busy worker waits to fill a batch when more requests are arriving "
                                "(default: 25 on CUDA, 10 on CPU; a lone request never waits).")
    publish_threads: int = Field(2, ge=1, description="Threads that moderate, encode and store finished images "
                                                      "beside the engine.")
    worker_models: list[str] | None = Field(None, description="Models this worker serves; default all available.")
    device: str | None = Field(None, description="torch device for engines; default cuda if present, else cpu.")
    vram_budget_gb: float | None = Field(
        None, gt=0, description="GiB of device memory a worker fills with models; to load another it evicts the least "
                                "recently used (default: the GPU's memory less 10% or 2 GiB; unlimited on CPU).")
    vram_evict: Literal["offload", "drop"] = Field(
        "offload", description="What eviction does with a model: offload (to CPU memory; its next use is a copy back) "
                               "or drop (freed; its next use loads it again: for hosts short of CPU memory too).")

    # Moderation and prompt upsampling
    image_moderation: str = Field("auto", description="Image checker: nudenet, fallback, or auto (nudenet if installed).")
    upsampler_url: str | None = Field(None, description="OpenAI-compatible chat endpoint for prompt upsampling.")
    upsampler_model: str | None = Field(None, description="Model name sent to the chat endpoint.")
    upsampler_key: str | None = Field(None, description="Bearer key for the chat endpoint.")
    upsampler_timeout_s: float = Field(20.0, gt=0, description="After this, upsampling falls back to offline.")

    # Outbound calls (webhooks, input_image URLs): docs/webhooks.md
    url_allowlist: str = Field(
        "", description="Comma-separated hosts (*.example.com for subdomains) and IP/CIDR ranges that webhook and "
                        "input_image URLs may reach although they are private, loopback or link-local.")
    webhook_secret: str | None = Field(
        None, description="Signs webhooks of requests without their own secret (whsec_<base64> or any string); "
                          "default: generated in data_dir/webhook.key.")
    webhook_timeout_s: float = Field(10.0, gt=0, description="One delivery attempt gives up after this.")
    webhook_max_attempts: int = Field(11, ge=1, description="Delivery attempts before a webhook is marked failed.")
    webhook_retry_base_s: float = Field(5.0, gt=0, description="Delay before the first retry; doubles each time.")
    webhook_retry_max_s: float = Field(1800.0, gt=0, description="Longest delay between two attempts.")
    webhook_poll_interval_s: float = Field(1.0, gt=0, description="How often the dispatcher looks for due webhooks.")
    webhook_concurrency: int = Field(4, ge=1, description="Webhook deliveries in flight at once per API process.")
    webhook_dispatcher: bool = Field(True, description="Deliver webhooks from this API process (darkroom serve).")

    # Live events and previews: docs/events.md
    events_poll_s: float = Field(5.0, gt=0, description="Safety net: how often an events stream looks at its request "
                                                        "without a wake-up (changes are pushed at once).")
    events_keepalive_s: float = Field(15.0, gt=0, description="Idle events streams send a comment this often.")
    events_max_s: float = Field(3600.0, gt=0, description="An events stream closes after this; clients reconnect.")
    preview_every_steps: int = Field(4, ge=0, description="Preview image every N denoising steps (0: none); "
                                                          "at most one a second.")

    # Storage: inputs, results and previews
    storage_url: str | None = Field(
        None, description="Where blobs live: file:///path (a folder) or s3://bucket/prefix (an S3-compatible "
                          "bucket, created if missing; needs the s3 extra). Default: data_dir/blobs.")
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint (radosgw, MinIO, ...); default AWS. Clients download results from "
                          "presigned URLs on this host, so it must be reachable by them.")
    s3_region: str | None = Field(None, description="S3 region (SigV4 signing); default boto3's (AWS_DEFAULT_REGION).")
    s3_access_key_id: str | None = Field(None, description="S3 access key; default boto3's chain (AWS_* variables, "
                                                           "instance role).")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key; default boto3's chain.")
    s3_path_style: bool = Field(True, description="Path-style bucket addressing (endpoint/bucket/key), which "
                                                  "S3-compatible servers need; false: virtual-hosted where possible.")

    # Synchronous dialects (OpenAI Images): the call waits for the queue
    sync_wait_s: float = Field(300.0, gt=0, description="A synchronous call gives up (504, its requests cancelled) "
                                                        "after this long.")

    log_level: str = "INFO"

    @field_validator("url_allowlist")
    @classmethod
    def _check_allowlist(cls, value: str) -> str:
        from darkroom.netguard import Allowlist

        Allowlist.parse(value)  # a typo fails at startup, not at the first webhook
        return value

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'darkroom.db').resolve()}"

    def resolved_models_file(self) -> Path:
        return self.models_file or _SOURCE_TREE_MODELS

    def resolved_secret_key(self) -> bytes:
        """The result-URL signing key: configured, or created once under data_dir and reused.

        Every API replica must sign with the same key, so a generated key is stored, not
        kept in memory.
        """
        if self.secret_key:
            return self.secret_key.encode()
        path = self.data_dir / "secret.key"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
            tmp.replace(path)
        return path.read_text().strip().encode()

    def resolved_webhook_secret(self) -> str:
        """The server-wide webhook signing secret: configured, or a ``whsec_`` secret created
        once under data_dir (shared by every API replica, like ``resolved_secret_key``)."""
        if self.webhook_secret:
            return self.webhook_secret
        path = self.data_dir / "webhook.key"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
            tmp.write_text("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
            tmp.chmod(0o600)
            try:
                os.link(tmp, path)  # first process wins; a replica starting beside it reads the winner's
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_text().strip()
