from __future__ import annotations

import httpx
import pytest

from tests.helpers import KEY_A, fresh_postgres_database, running_server


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    with fresh_postgres_database() as url:
        yield url


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
