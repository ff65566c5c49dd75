"""Schema migrations (Alembic), run by `svd-server db upgrade` and by `serve` on SQLite."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# Any fixed number: PostgreSQL advisory lock so that processes starting together migrate once.
_PG_LOCK_ID = 0x5FD5E4


class SchemaTooNew(RuntimeError):
    pass


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as c:
        return MigrationContext.configure(c).get_current_revision()


def head_revision() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()


def check_not_newer(engine: Engine) -> None:
    """Refuse a database migrated by a newer svd-server than this one."""
    current = current_revision(engine)
    known = {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}
    if current is not None and current not in known:
        raise SchemaTooNew(f"the database is at schema revision {current!r}, newer than this "
                           f"svd-server knows (head {head_revision()!r}); upgrade svd-server")


def upgrade(engine: Engine) -> str:
    """Bring the schema to head; returns the revision. Safe to call from many processes."""
    check_not_newer(engine)
    cfg = _config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_ID})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return head_revision()


def is_current(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()
