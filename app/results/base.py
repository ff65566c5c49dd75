"""The result store interface and result keys.

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

