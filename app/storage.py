"""Result bytes (the MP4s), behind one small interface: files under the data dir (the
embedded default) or rows in the database (`app/storage_db.py`, for several machines).

Keys are made here from validated job ids only; no path is ever built from user input.
Writers encode to a local temp file first, then `commit` it: readers see all or nothing.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Protocol

_KEY_RE = re.compile(r"^[0-9a-f]{64}\.(mp4|webm|gif)$")


def key_for(job_id: str, ext: str = "mp4") -> str:
    key = f"{job_id}.{ext}"
    if not _KEY_RE.match(key):
        raise ValueError("invalid job id for a result key")
    return key


def check_key(key: str) -> str:
    if not _KEY_RE.match(key):
        raise ValueError("invalid result key")
    return key


class ResultStore(Protocol):
    def key_for(self, job_id: str, ext: str = "mp4") -> str: ...

    def temp_path(self, key: str) -> Path:
        """A local file to encode into before `commit`."""

    def commit(self, temp: Path, key: str) -> None:
        """Make the temp file durable under `key`, all at once."""

    def exists(self, key: str) -> bool: ...

    def local_path(self, key: str) -> Path | None:
        """A file to send as it is, when the store has one; else use `read`."""

    def read(self, key: str) -> bytes: ...

    def delete(self, key: str) -> None: ...

    def remove_stale_temps(self) -> int: ...


def private_dir(path: Path) -> Path:
    """mkdir -p, readable by this user only (700) for every folder it creates; a folder that
    already exists keeps the mode its owner gave it."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for p in missing:
        os.chmod(p, 0o700)
    return path


def remove_dead_temps(folder: Path) -> int:
    """Temp files left by a process that died mid-write (its pid no longer runs)."""
    n = 0
    for p in folder.glob(".*.tmp"):
        try:
            os.kill(int(p.name.rsplit(".", 2)[-2]), 0)
            continue                      # still being written by a live process
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        p.unlink(missing_ok=True)
        n += 1
    return n


class FileResultStore:
    def __init__(self, root: Path):
        self.root = private_dir(root)

    key_for = staticmethod(key_for)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def local_path(self, key: str) -> Path | None:
        return self.path(key)

    def read(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def temp_path(self, key: str) -> Path:
        """Where to write a result before `commit`; a crash leaves only a temp file behind."""
        return self.root / f".{key}.{os.getpid()}.tmp"

    def commit(self, temp: Path, key: str) -> None:
        """fsync the temp file, then rename it into place: readers see all or nothing."""
        with open(temp, "rb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            os.fsync(fh.fileno())
        os.replace(temp, self.path(key))
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def remove_stale_temps(self) -> int:
        return remove_dead_temps(self.root)
