from __future__ import annotations

import httpx
import pytest

from tests.helpers import KEY_A, PG_ADMIN_URL, running_server, skip_or_fail


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    import uuid

    from sqlalchemy import create_engine, text

    from app.jobs.tables import sqlalchemy_url
    admin = create_engine(sqlalchemy_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        skip_or_fail(f"no PostgreSQL at {PG_ADMIN_URL}: {exc.__class__.__name__}")
    name = f"svd_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg(postgres_url):
    """(url, engine) of the session's PostgreSQL database, at the current schema, empty."""
    from sqlalchemy import text

    from app.jobs import migrate
    from app.jobs.tables import make_engine
    engine = make_engine(postgres_url)
    migrate.upgrade(engine)
    with engine.begin() as c:
        c.execute(text("TRUNCATE jobs, results"))
    yield postgres_url, engine
    engine.dispose()


@pytest.fixture
def server(tmp_path):
    with running_server(tmp_path) as s:
        yield s


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {KEY_A}"},
                      timeout=30) as c:
        yield c


# The longest test files first, kept in this order by pyproject's --no-loadscope-reorder: each
# of the two test processes then starts on one of them, and the short files fill in beside.
LONGEST_FIRST = ("test_bench_startup.py", "test_crash_recovery.py", "test_scale_out.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)     # stable: order kept
