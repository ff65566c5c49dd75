"""Result bytes in the database (SVD_RESULT_STORE=database): with several machines sharing
one PostgreSQL, any API process can serve any video. See docs/scaling.md for where this stops
being a good idea."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from sqlalchemy import delete, exists, insert, select
from sqlalchemy.engine import Engine

from app.config import private_dir
from app.jobs.tables import results
from app.results.base import check_key, key_for, remove_dead_temps


class DatabaseResultStore:
    def __init__(self, engine: Engine, temp_dir: Path | None = None):
        self.engine = engine
        self.temp_dir = Path(temp_dir or tempfile.gettempdir()) / "svd-results"
        private_dir(self.temp_dir)

    key_for = staticmethod(key_for)

    def temp_path(self, key: str) -> Path:
        return self.temp_dir / f".{check_key(key)}.{os.getpid()}.tmp"

    def commit(self, temp: Path, key: str) -> None:
        data = Path(temp).read_bytes()
        with self.engine.begin() as c:       # one row, one transaction: all or nothing
            c.execute(delete(results).where(results.c.key == check_key(key)))
            c.execute(insert(results).values(key=key, data=data, created_at=time.time()))

    def exists(self, key: str) -> bool:
        with self.engine.connect() as c:
            return bool(c.execute(select(exists().where(results.c.key == check_key(key)))).scalar())

    def local_path(self, key: str) -> Path | None:
        return None

    def read(self, key: str) -> bytes:
        with self.engine.connect() as c:
            data = c.execute(select(results.c.data).where(results.c.key == check_key(key))).scalar()
        if data is None:
            raise FileNotFoundError(key)
        return bytes(data)

    def delete(self, key: str) -> None:
        with self.engine.begin() as c:
            c.execute(delete(results).where(results.c.key == check_key(key)))

    def remove_stale_temps(self) -> int:
        return remove_dead_temps(self.temp_dir)
