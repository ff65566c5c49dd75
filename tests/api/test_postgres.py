"""The same API on PostgreSQL, with the result bytes in the database (the scale-out setup)."""
from __future__ import annotations

import threading
import time

import httpx
import pytest
from sqlalchemy import text

from app.jobs import migrate
from app.jobs.sql import SqlJobStore
from app.jobs.tables import make_engine
from app.jobs.sweeper import sweep
from tests.api.test_start import assert_error, start
from app.backend import open_job_store
from tests.helpers import KEY_A, KEY_B, inspect_mp4, make_settings, running_server, wait_done


def test_generate_poll_and_serve_from_the_database(tmp_path, pg):
    url, engine = pg
    with running_server(tmp_path, database_url=url, result_ttl_hours=1 / 3600) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        job_id = start(client, data={"seed": "31"}).json()["id"]
        video = wait_done(client, job_id, headers={"accept": "video/*"})
        assert video.status_code == 200 and video.headers["seed"] == "31"
        assert inspect_mp4(video.content).frames == 4
        as_json = client.get(f"/v2beta/image-to-video/result/{job_id}",
                             headers={"accept": "application/json"})
        assert as_json.json()["seed"] == 31
        with engine.connect() as c:
            assert c.execute(text("SELECT length(data) FROM results")).scalar() == len(video.content)
        assert not list((server.settings.data_dir / "results").glob("*.mp4"))   # no files
        other = httpx.get(f"{server.url}/v2beta/image-to-video/result/{job_id}",
                          headers={"authorization": KEY_B})
        assert_error(other, 404, "generation_not_found")
        time.sleep(1.2)
        state = server.app.state
        assert sweep(state.store, state.results, server.settings) == 1
        with engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM results")).scalar() == 0
            assert c.execute(text("SELECT count(*) FROM jobs")).scalar() == 0


def test_a_schema_that_is_not_current_is_refused(tmp_path, pg):
    url, engine = pg
    with engine.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = '0002'"))
    try:
        with pytest.raises(SystemExit, match="db upgrade"):
            open_job_store(make_settings(tmp_path, database_url=url))
    finally:
        with engine.begin() as c:
            c.execute(text("UPDATE alembic_version SET version_num = :v"),
                      {"v": migrate.head_revision()})


def test_only_one_process_sweeps_at_a_time(pg):
    url, _ = pg
    a, b = SqlJobStore.from_url(url), SqlJobStore.from_url(url)
    try:
        with a.exclusive("svd-sweeper") as first:
            with b.exclusive("svd-sweeper") as second:
                assert (first, second) == (True, False)
        with b.exclusive("svd-sweeper") as again:
            assert again
    finally:
        a.close()
        b.close()


def test_migrations_from_many_processes_at_once(postgres_url):
    from sqlalchemy import create_engine

    from app.jobs.tables import sqlalchemy_url
    admin = create_engine(sqlalchemy_url(postgres_url), isolation_level="AUTOCOMMIT")
    base = postgres_url.rsplit("/", 1)[0]
    name = "svd_migrate_race"
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        c.execute(text(f'CREATE DATABASE "{name}"'))
    errors, revisions = [], []

    def upgrade():
        engine = make_engine(f"{base}/{name}")
        try:
            revisions.append(migrate.upgrade(engine))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=upgrade) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
    assert errors == [] and revisions == [migrate.head_revision()] * 4
