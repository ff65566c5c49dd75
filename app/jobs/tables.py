"""The database schema as SQLAlchemy tables, and opening an engine on a URL.

The schema is owned by the Alembic migrations in app/migrations; the tables here mirror it
for queries, and a test checks the two agree.
"""
from __future__ import annotations

import os

from sqlalchemy import (BigInteger, Boolean, Column, Float, Index, Integer, LargeBinary,
                        MetaData, String, Table, Text, create_engine, event, false)
from sqlalchemy.engine import Engine

metadata = MetaData()

jobs = Table(
    "jobs", metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("state", String(20), nullable=False),
    Column("seed", BigInteger, nullable=False),  # up to 4294967294
    Column("cfg_scale", Float, nullable=False),
    Column("motion_bucket_id", Integer, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("num_frames", Integer),
    Column("steps", Integer),
    Column("image", LargeBinary),
    Column("progress", Float, nullable=False, default=0.0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("worker", String(200)),
    Column("lease_until", Float),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("expires_at", Float),
    Column("error", Text),
    Column("finish_reason", String(32)),
    Column("result_key", String(200)),
    Column("result_bytes", BigInteger),         # its size: the per-key storage bound
    Column("step", Integer),
    Column("total_steps", Integer),
    Column("cancel_requested", Boolean, nullable=False, default=False, server_default=false()),
    Column("output_fps", Integer),              # None: SVD_OUTPUT_FPS
    Column("noise_aug_strength", Float),        # None: the reference 0.02
    Column("output_format", String(8)),         # None: mp4
    Column("webhook_url", Text),
    Column("webhook_status", String(16)),       # pending | delivered | failed
    Column("webhook_attempts", Integer),
    Index("ix_jobs_state_created", "state", "created_at"),
    Index("ix_jobs_expires_at", "expires_at"),
    Index("ix_jobs_owner_state", "owner", "state"),
)

# Result bytes when SVD_RESULT_STORE=database (app/results/database.py): any API process can then
# serve any video. Keyed like the files of the file store.
results = Table(
    "results", metadata,
    Column("key", String(80), primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

def sqlalchemy_url(url: str) -> str:
    """Plain postgresql:// URLs use psycopg 3, the driver this project installs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str) -> Engine:
    url = sqlalchemy_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        path = engine.url.database
        if path and path != ":memory:" and not os.path.exists(path):
            # Created 600 before SQLite opens it; its -wal and -shm files take the same mode.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")      # readers never wait for the writer
            cur.execute("PRAGMA synchronous=FULL")      # an accepted job survives power loss
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA secure_delete=ON")      # removed images are overwritten
            cur.close()
        return engine
    return create_engine(url, pool_pre_ping=True)
