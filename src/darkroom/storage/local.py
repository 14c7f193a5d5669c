"""Blobs as files under a folder, written atomically and fsynced."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath

from darkroom.errors import NotFound


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        parts = PurePosixPath(key).parts
        # Keys come from our own code, but a key is also part of a URL: never leave the root.
        if not parts or any(p in ("..", "") or p.startswith("/") for p in parts) or PurePosixPath(key).is_absolute():
            raise NotFound(f"invalid blob key {key!r}")
        return self.root.joinpath(*parts)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temp file in the same folder, fsync, then rename: readers never see a
        # partial file, and the rename is durable once the folder is fsynced too.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"no blob {key!r}") from exc

    def exists(self, key: str) -> bool:
        try:
            return self._path(key).is_file()
        except NotFound:
            return False

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except NotFound:
            pass

    def url_for(self, key: str, ttl_s: int, *, mutable: bool = False) -> str | None:
        """None: files are served by darkroom's own signed ``/media`` URLs."""
        return None
