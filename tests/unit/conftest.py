"""Fixtures shared by the unit tests."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from app.jobs import migrate
from app.jobs.sql import SqlJobStore
from app.jobs.tables import make_engine
from app.jobs.memory import MemoryJobStore
from tests.helpers import sqlite_job_store


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def any_store(request, tmp_path):
    """The job store contract holds on each: the in-memory twin, SQLite and PostgreSQL."""
    if request.param == "memory":
        s = MemoryJobStore()
    elif request.param == "sqlite":
        s = sqlite_job_store(tmp_path / "jobs.db")
    else:
        engine = make_engine(request.getfixturevalue("postgres_url"))
        migrate.upgrade(engine)
        with engine.begin() as c:
            c.execute(text("TRUNCATE jobs"))
        s = SqlJobStore(engine)
    yield s
    s.close()
