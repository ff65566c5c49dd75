from __future__ import annotations

import os
import time
from contextlib import contextmanager

import httpx
import pytest

from app.config import Settings
from app.main import create_app
from tests.fakes import FakeGenerator
from tests.helpers import ServerThread

KEY_A = "test-key-a"
KEY_B = "test-key-b"
TEST_SIZES = "64x64,96x64,1024x576,576x1024,768x768"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str):
    """A test that needs something missing is skipped on a laptop and fails in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing service fails instead of skipping)")
    pytest.skip(reason)


PG_ADMIN_URL = os.environ.get("SVD_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    import uuid

    from sqlalchemy import create_engine, text

    from app.jobs.sql import sqlalchemy_url
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
    from app.jobs.sql import make_engine
    engine = make_engine(postgres_url)
    migrate.upgrade(engine)
    with engine.begin() as c:
        c.execute(text("TRUNCATE jobs, results"))
    yield postgres_url, engine
    engine.dispose()


def make_settings(tmp_path, **overrides) -> Settings:
    values = dict(data_dir=tmp_path / "data", api_keys=f"{KEY_A},{KEY_B}", allowed_sizes=TEST_SIZES,
                  workers=1, sweep_interval_s=3600)
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running_server(tmp_path, generator=None, **overrides):
    generator = generator or FakeGenerator()
    settings = make_settings(tmp_path, **overrides)
    app = create_app(settings, generator_factory=lambda: generator, model_label="fake")
    with ServerThread(app) as server:
        deadline = time.time() + 10
        while httpx.get(server.url + "/readyz").status_code != 200:
            assert time.time() < deadline, "server never became ready"
            time.sleep(0.02)
        server.generator = generator
        server.settings = settings
        yield server


@pytest.fixture
def server(tmp_path):
    with running_server(tmp_path) as s:
        yield s


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {KEY_A}"},
                      timeout=30) as c:
        yield c


def wait_done(client: httpx.Client, job_id: str, timeout: float = 30, **kw) -> httpx.Response:
    deadline = time.time() + timeout
    while True:
        r = client.get(f"/v2beta/image-to-video/result/{job_id}", **kw)
        if r.status_code != 202:
            return r
        assert time.time() < deadline, "generation did not finish in time"
        time.sleep(0.05)


# The longest test files first, kept in this order by pyproject's --no-loadscope-reorder: each
# of the two test processes then starts on one of them, and the short files fill in beside.
LONGEST_FIRST = ("test_bench_startup.py", "test_crash_recovery.py", "test_scale_out.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)     # stable: order kept
