"""`svd-server db upgrade`: bring the database schema to this code's revision."""
from __future__ import annotations

import sys

from app.config import load_settings, private_dir
from app.logs import configure_logging


def add_parser(sub) -> None:
    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply migrations").set_defaults(func=upgrade)


def upgrade(args) -> int:
    from app.jobs import migrate
    from app.jobs.tables import make_engine

    settings = load_settings()
    if settings is None:
        return 2
    configure_logging(settings.log_level)
    private_dir(settings.data_dir)
    engine = make_engine(settings.resolved_database_url)
    try:
        print(f"database schema at revision {migrate.upgrade(engine)}")
    except migrate.SchemaTooNew as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    return 0
