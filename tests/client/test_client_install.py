"""The base distribution installs and works without the server's dependencies.

The wheel is built from this tree and installed into a fresh virtual environment with only
what its metadata declares for a plain ``pip install darkroom`` (no extra): then the SDK
imports, torch and the server stack are absent, ``darkroom --version`` runs, ``darkroom
generate --url`` writes an image made by a real server on loopback, and a command that needs
the ``server`` extra says so.

Offline: the declared dependencies come from a wheelhouse made of the distributions already
installed here (the same files at the same versions pip installed from PyPI, repacked as
wheels), and pip runs with ``--no-index`` and no configuration file.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

from darkroom import __version__

REPO = Path(__file__).resolve().parents[2]
#: Distributions of the ``server`` extra that a base install must not bring.
SERVER_ONLY = ("torch", "diffusers", "transformers", "fastapi", "uvicorn", "sqlalchemy", "alembic", "numpy",
               "pydantic_settings", "PIL")
#: Files of an installed distribution that pip wrote itself: not part of its wheel.
INSTALLER_FILES = {"INSTALLER", "REQUESTED", "RECORD", "direct_url.json"}


def _pip(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """This environment's pip, ignoring every pip configuration (no index, no find-links)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    proc = subprocess.run([sys.executable, "-m", "pip", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"pip {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _requirements(raw: list[str], extras: set[str]) -> list[Requirement]:
    """The requirements among ``raw`` (Requires-Dist lines) that apply with ``extras`` requested."""
    wanted = []
    for line in raw:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
            wanted.append(req)
    return wanted


def _closure(requires: list[str]) -> dict[str, tuple[metadata.Distribution, set[str]]]:
    """Every installed distribution that ``requires`` (with no extra) pulls in, with the extras
    asked of it."""
    found: dict[str, tuple[metadata.Distribution, set[str]]] = {}
    todo = _requirements(requires, set())
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        dist, known = found.get(name) or (metadata.distribution(req.name), set())
        assert req.specifier.contains(dist.version, prereleases=True), f"{req}, but {dist.version} is installed"
        if name in found and set(req.extras) <= known:
            continue
        found[name] = (dist, known | set(req.extras))
        todo += _requirements(dist.requires or [], found[name][1])
    return found


def _repack(dist: metadata.Distribution, dest: Path) -> Path:
    """An installed distribution as the wheel it came from: its files (scripts aside: pip writes
    them again from entry_points.txt), named with its WHEEL file's tags, and a fresh RECORD."""
    files = [f for f in dist.files or [] if not f.parts[0] == ".." and "__pycache__" not in f.parts]
    info_dir = next(f.parts[0] for f in files if f.parts[0].endswith(".dist-info"))
    wheel_meta = Parser().parsestr(Path(dist.locate_file(f"{info_dir}/WHEEL")).read_text())
    tags = [tag.split("-") for tag in wheel_meta.get_all("Tag")]  # py2-none-any, py3-none-any: py2.py3-none-any
    tag = "-".join(".".join(dict.fromkeys(part)) for part in zip(*tags))
    target = dest / f"{info_dir.removesuffix('.dist-info')}-{tag}.whl"
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as whl:
        for f in files:
            if f.parts[0] == info_dir and f.name in INSTALLER_FILES:
                continue
            data = Path(dist.locate_file(f)).read_bytes()
            whl.writestr(f.as_posix(), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            writer.writerow([f.as_posix(), f"sha256={digest}", len(data)])
        writer.writerow([f"{info_dir}/RECORD", "", ""])
        whl.writestr(f"{info_dir}/RECORD", record.getvalue())
    return target


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding the darkroom wheel and its base dependencies only."""
    root = tmp_path_factory.mktemp("client-install")
    dist, wheelhouse = root / "dist", root / "wheelhouse"
    wheelhouse.mkdir()
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(dist), str(REPO))
    (wheel,) = dist.glob("darkroom-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        declared = Parser().parsestr(whl.read(f"darkroom-{__version__}.dist-info/METADATA").decode())
    requires = declared.get_all("Requires-Dist") or []
    for _, (installed, _) in sorted(_closure(requires).items()):
        _repack(installed, wheelhouse)

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    _pip("--python", str(python), "install", "-q", "--no-index", "--find-links", str(wheelhouse), str(wheel))
    _pip("--python", str(python), "check")  # every declared dependency is there, at a fitting version
    return venv


def _run(venv: Path, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("DARKROOM_")}
    return subprocess.run(args, env={**env, "VIRTUAL_ENV": str(venv)}, capture_output=True, text=True,
                          timeout=timeout, cwd=venv)


def test_the_sdk_installs_without_the_server_stack(client_venv: Path) -> None:
    python = str(client_venv / "bin" / "python")
    probe = ("import importlib.util as u, darkroom.client as c; print(c.Client.__module__); "
             f"print(*[m for m in {SERVER_ONLY!r} if u.find_spec(m) is not None])")
    proc = _run(client_venv, [python, "-c", probe])
    assert proc.returncode == 0, proc.stderr
    imported, present = proc.stdout.splitlines()
    assert imported == "darkroom.client._sync"
    assert present == ""  # none of torch, diffusers, fastapi, sqlalchemy, ... is installed
    torch = _run(client_venv, [python, "-c", "import torch"])
    assert torch.returncode == 1 and "No module named 'torch'" in torch.stderr

    version = _run(client_venv, [str(client_venv / "bin" / "darkroom"), "--version"])
    assert (version.returncode, version.stdout, version.stderr) == (0, f"darkroom {__version__}\n", "")


def test_generate_url_from_the_base_install_against_a_real_server(client_venv: Path, deployment,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "from-client.png"
    proc = _run(client_venv, [str(client_venv / "bin" / "darkroom"), "generate", "a red triangle", "-o", str(out),
                              "--model", "tiny", "--seed", "5", "--url", deployment.server.url,
                              "--key", deployment.a.key])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {out} (1024x1024, seed 5,")
    image = Image.open(out)
    assert image.format == "PNG" and image.size == (1024, 1024)


@pytest.mark.parametrize("args", [["serve"], ["keys", "list"], ["generate", "a red triangle"]])
def test_server_commands_name_the_extra(client_venv: Path, args: list[str]) -> None:
    proc = _run(client_venv, [str(client_venv / "bin" / "darkroom"), *args])
    assert proc.returncode == 1
    assert "pip install 'darkroom[server]'" in proc.stderr and "Traceback" not in proc.stderr
    assert f"darkroom {args[0]} needs the server's dependencies" in proc.stderr
