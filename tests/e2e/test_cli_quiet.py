"""The one-shot CLI as a newcomer meets it: quiet by default, loud about errors, and the small
things around it (--version, keys list's header, help not cut at 80 columns)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from darkroom import __version__
from darkroom.testing.server import darkroom_env

BAR = re.compile(r"^(queued|processing|generating|done)\b")
RESULT = re.compile(r"^wrote \S+ \(\d+x\d+, seed \d+, [\d.]+ s\)$")
LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "darkroom.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_one_shot_generate_prints_only_its_progress_and_result(tmp_path: Path, tiny_models: Path) -> None:
    # Fallback image moderation, as without the nudenet extra: its warning is one of the expected ones.
    env = darkroom_env(tmp_path / "data", tiny_models, DARKROOM_IMAGE_MODERATION="fallback")
    out = tmp_path / "out.png"
    proc = _cli(["generate", "a red circle", "-o", str(out), "--model", "tiny", "--models", str(tiny_models)], env)
    assert proc.returncode == 0, proc.stderr
    assert [RESULT.match(line) is not None for line in _lines(proc.stdout)] == [True], proc.stdout
    assert "(1024x1024," in proc.stdout
    stderr = _lines(proc.stderr)
    assert stderr and all(BAR.match(line) for line in stderr), proc.stderr  # the bar, nothing else
    assert stderr[-1].startswith("done")
    assert "0/None" not in proc.stderr and "None" not in proc.stderr
    assert out.exists()

    # generate's own key does not show in keys list (and there is a header row)
    keys = _cli(["keys", "list"], env)
    assert keys.returncode == 0 and keys.stderr == ""
    assert "local-cli" not in keys.stdout and "no keys yet" in keys.stdout


def test_one_shot_generate_imports_no_http_layer(tmp_path: Path, tiny_models: Path) -> None:
    # The in-process path needs the store, the worker and the engine: never the API or its server.
    env = darkroom_env(tmp_path / "data", tiny_models, DARKROOM_IMAGE_MODERATION="fallback")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "darkroom.cli", "generate", "a red circle",
                           "-o", str(tmp_path / "out.png"), "--model", "tiny"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "darkroom.worker.runner" in imported and "torch" in imported  # the listing is complete
    assert not {m for m in imported if m.split(".")[0] in ("fastapi", "starlette", "uvicorn")}
    assert not {m for m in imported if m.startswith("darkroom.api")}


def test_verbose_generate_logs_on_lines_of_their_own(tmp_path: Path, tiny_models: Path) -> None:
    # FORCE_COLOR makes rich draw the live bar (carriage returns, erase-line codes) as in a terminal:
    # every log record must still start a line of its own, never continue the bar's.
    env = darkroom_env(tmp_path / "data", tiny_models, DARKROOM_IMAGE_MODERATION="fallback", FORCE_COLOR="1")
    proc = _cli(["generate", "a red circle", "-o", str(tmp_path / "out.jpg"), "--model", "tiny", "-v"], env)
    assert proc.returncode == 0, proc.stderr
    segments = [s for s in re.split(r"[\r\n]", ANSI.sub("", proc.stderr)) if s.strip()]
    logs = [s for s in segments if re.search(r" (INFO|WARNING) [\w.]+: ", s)]
    assert logs and all(LOG.match(s) for s in logs), [s for s in logs if not LOG.match(s)][:3]
    assert all(BAR.match(s) or LOG.match(s) for s in segments), [s for s in segments if not BAR.match(s)
                                                                 and not LOG.match(s)][:3]
    text = "\n".join(logs)
    assert "INFO darkroom.worker.runner: loading tiny" in text  # -v shows what is hidden by default
    assert "fallback mode" in text  # the expected warnings too
    assert "alembic" not in proc.stderr  # alembic's INFO lines: never
    assert RESULT.match(proc.stdout.strip())


def test_errors_stay_loud(tmp_path: Path, tiny_models: Path) -> None:
    env = darkroom_env(tmp_path / "data", tiny_models)
    proc = _cli(["generate", "a red circle", "-o", str(tmp_path / "x.jpg"), "--model", "tiny", "--seed", "-3"], env)
    assert proc.returncode == 1
    assert "payload.seed" in proc.stderr and "invalid_field" in proc.stderr
    assert proc.stdout == ""


def test_version() -> None:
    proc = _cli(["--version"], darkroom_env(Path("unused"), Path("unused")))
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout == f"darkroom {__version__}\n"


def test_keys_list_has_a_header_and_no_cli_call_prints_alembic(tmp_path: Path, tiny_models: Path) -> None:
    env = darkroom_env(tmp_path / "data", tiny_models)
    created = _cli(["keys", "create", "--name", "alice"], env)  # the first call: migrates the new database
    assert created.returncode == 0 and created.stderr == "", created.stderr
    listing = _cli(["keys", "list"], env)
    assert listing.returncode == 0 and listing.stderr == ""
    header, row = listing.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "PREFIX", "STATE", "LIMITS"]
    assert row.split()[1:] == ["alice", created.stdout.splitlines()[-1][:8] + "…", "active", "defaults"]
    assert header.index("NAME") == row.index("alice") and header.index("STATE") == row.index("active")
    refused = _cli(["keys", "create", "--name", "local-cli"], env)  # generate's own key's name
    assert refused.returncode == 2 and "darkroom generate's own key" in refused.stderr


def test_help_is_not_cut_at_80_columns() -> None:
    proc = _cli(["generate", "--help"], {**darkroom_env(Path("unused"), Path("unused")), "COLUMNS": ""})
    assert proc.returncode == 0
    assert "--prompt-upsampling / --no-prompt-upsampling" in proc.stdout
    assert "…" not in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) <= 120
    assert "-v, --verbose" in proc.stdout and "--log-level" in proc.stdout
