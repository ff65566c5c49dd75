"""Results as files under the data directory (the embedded default): written to a temp
file, fsynced and renamed into place, readable by this user only."""
from __future__ import annotations

import os
from pathlib import Path

from app.config import private_dir
from app.results.base import check_key, key_for, remove_dead_temps


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
