"""The job store contract, run against the in-memory twin and SQLite."""
from __future__ import annotations

import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from app.jobs import migrate
from app.jobs.model import Job, JobState, new_job_id
from app.jobs.store import CancelOutcome
from app.jobs.tables import make_engine, metadata

T0 = 1_000_000.0


@pytest.fixture
def store(any_store):
    return any_store


def job(created=T0, owner="o" * 64, **kw) -> Job:
    return Job(id=new_job_id(), owner=owner, seed=4294967294, cfg_scale=1.8, motion_bucket_id=127,
               width=64, height=64, created_at=created, image=b"png-bytes", **kw)


def test_create_get_roundtrip_keeps_big_seeds_and_hides_the_image(store):
    j = job()
    store.create(j)
    got = store.get(j.id)
    assert got.state == JobState.QUEUED and got.seed == 4294967294 and got.image is None
    assert store.get(j.id, with_image=True).image == b"png-bytes"
    assert store.get(new_job_id()) is None


def test_claim_takes_the_oldest_once(store):
    old, new = job(created=T0), job(created=T0 + 1)
    store.create(new)
    store.create(old)
    a = store.claim("w1", T0 + 5, 30)
    b = store.claim("w2", T0 + 5, 30)
    assert (a.id, b.id) == (old.id, new.id)
    assert a.state == JobState.RUNNING and a.worker == "w1" and a.attempts == 1
    assert a.lease_until == T0 + 35 and a.image == b"png-bytes"
    assert store.claim("w3", T0 + 5, 30) is None


def test_next_queued_is_what_claim_would_take_and_leaves_it_queued(store):
    assert store.next_queued() is None
    old, new = job(created=T0), job(created=T0 + 1)
    store.create(new)
    store.create(old)
    ahead = store.next_queued()
    assert ahead.id == old.id and ahead.image == b"png-bytes"
    assert (store.get(old.id).state, store.get(old.id).attempts) == (JobState.QUEUED, 0)
    assert store.claim("w1", T0 + 5, 30).id == ahead.id
    assert store.next_queued().id == new.id


def test_cancel_is_at_once_unless_the_job_is_denoising(store):
    owner = "o" * 64
    queued, starting, denoising, decoding = (job(created=T0 + i) for i in range(4))
    for j in (queued, starting, denoising, decoding):
        store.create(j)
    assert store.cancel(new_job_id(), owner, T0, T0 + 60) is None            # unknown
    assert store.cancel(queued.id, "x" * 64, T0, T0 + 60) is None           # not the owner's
    assert store.cancel(queued.id, owner, T0, T0 + 60) == CancelOutcome.CANCELLED
    claimed = [store.claim("w", T0, 30) for _ in range(3)]
    assert [c.id for c in claimed] == [starting.id, denoising.id, decoding.id]
    assert store.set_progress(claimed[1], 0.5, 3, 4)
    assert store.set_progress(claimed[2], 0.9, 4, 4)   # the last step is done: VAE decode
    for j in (starting, denoising):                    # on the GPU: stopped at the next step
        assert store.cancel(j.id, owner, T0, T0 + 60) == CancelOutcome.REQUESTED
        got = store.get(j.id)
        assert got.state == JobState.RUNNING and got.cancel_requested
    assert store.cancel(decoding.id, owner, T0 + 1, T0 + 61) == CancelOutcome.CANCELLED_RUNNING
    got = store.get(decoding.id)
    assert (got.state, got.finished_at, got.expires_at, got.error) == \
        (JobState.CANCELLED, T0 + 1, T0 + 61, "cancelled by its owner")
    assert not store.finish(claimed[2], JobState.SUCCEEDED, T0 + 2, T0 + 62)   # late worker
    assert not store.heartbeat(claimed[2], T0 + 40)
    assert store.get(decoding.id).state == JobState.CANCELLED
    assert store.cancel(decoding.id, owner, T0, T0 + 60) == CancelOutcome.FINISHED


def test_concurrent_claims_never_share_a_job(store):
    for i in range(30):
        store.create(job(created=T0 + i))
    got, lock = [], threading.Lock()

    def claimer(name):
        while (j := store.claim(name, T0, 30)) is not None:
            with lock:
                got.append(j.id)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 30 and len(set(got)) == 30


def test_queue_bounds_hold_under_concurrent_submits(store):
    owners = ["a" * 64, "b" * 64]
    refused, lock = [], threading.Lock()

    def submitter(i):
        for n in range(10):
            reason = store.create(job(created=T0 + n, owner=owners[i % 2]), max_queued=12,
                                  max_queued_per_owner=7)
            if reason:
                with lock:
                    refused.append(reason)

    threads = [threading.Thread(target=submitter, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_owner = [store.count(JobState.QUEUED, o) for o in owners]
    assert store.count(JobState.QUEUED) == 12 and max(per_owner) <= 7
    assert len(refused) == 60 - 12 and set(refused) <= {"owner", "total"}
    assert store.create(job(owner="c" * 64), max_queued=12) == "total"
    fullest = max(owners, key=lambda o: store.count(JobState.QUEUED, o))
    assert store.create(job(owner=fullest),
                        max_queued_per_owner=store.count(JobState.QUEUED, fullest)) == "owner"
    assert store.create(job(owner="c" * 64)) is None          # no bounds: always room


def test_finish_is_conditional_on_the_claim(store):
    store.create(j := job())
    claimed = store.claim("w1", T0, 30)
    impostor = Job(**{**claimed.__dict__, "worker": "w2"})
    assert not store.finish(impostor, JobState.SUCCEEDED, T0 + 1, T0 + 100)
    assert store.finish(claimed, JobState.SUCCEEDED, T0 + 1, T0 + 100, finish_reason="SUCCESS",
                        result_key="k")
    assert not store.finish(claimed, JobState.FAILED, T0 + 2, T0 + 100)   # exactly once
    got = store.get(j.id)
    assert got.state == JobState.SUCCEEDED and got.progress == 1.0 and got.expires_at == T0 + 100
    assert not store.heartbeat(claimed, T0 + 60)
    assert not store.set_progress(claimed, 0.5)


def test_expired_lease_requeues_and_the_late_worker_cannot_finish(store):
    store.create(j := job())
    first = store.claim("w1", T0, 30)
    assert store.set_progress(first, 0.4) and store.heartbeat(first, T0 + 40)
    assert store.requeue_expired(T0 + 39, 3, T0 + 1000) == 0
    assert store.requeue_expired(T0 + 41, 3, T0 + 1000) == 1
    assert store.get(j.id).state == JobState.QUEUED
    second = store.claim("w1", T0 + 42, 30)          # same worker name, new attempt
    assert second.attempts == 2
    assert not store.finish(first, JobState.SUCCEEDED, T0 + 43, T0 + 100)   # stale claim
    assert store.finish(second, JobState.SUCCEEDED, T0 + 44, T0 + 100)


def test_poison_job_fails_after_max_attempts(store):
    store.create(j := job())
    for attempt in range(1, 4):
        claimed = store.claim("w", T0 + attempt * 100, 30)
        assert claimed.attempts == attempt
        store.requeue_expired(T0 + attempt * 100 + 31, 3, T0 + 5000)
    got = store.get(j.id)
    assert got.state == JobState.FAILED and "3 times" in got.error
    assert got.expires_at == T0 + 5000
    assert store.claim("w", T0 + 1000, 30) is None


def test_restart_requeues_only_this_workers_jobs(store):
    store.create(job(created=T0))
    store.create(job(created=T0 + 1))
    mine = store.claim("host:8000/w0", T0, 30)
    theirs = store.claim("host:8001/w0", T0, 30)
    assert store.requeue_worker("host:8000/w0", 3, T0 + 1, T0 + 100) == 1
    assert store.get(mine.id).state == JobState.QUEUED
    assert store.get(theirs.id).state == JobState.RUNNING


def test_release_hands_a_job_back(store):
    store.create(j := job())
    claimed = store.claim("w", T0, 30)
    assert store.release(claimed)
    assert store.get(j.id).state == JobState.QUEUED and store.count(JobState.QUEUED) == 1


def test_expired_lists_finished_jobs_past_retention(store):
    store.create(a := job())
    store.create(job(created=T0 + 1))
    claimed = store.claim("w", T0, 30)
    store.finish(claimed, JobState.FAILED, T0 + 1, T0 + 10, error="x")
    assert store.expired(T0 + 5) == []
    assert [x.id for x in store.expired(T0 + 11)] == [a.id]
    store.delete(a.id)
    assert store.get(a.id) is None and store.expired(T0 + 11) == []


def test_migrations_match_the_table_definition(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    assert migrate.upgrade(engine) == migrate.head_revision()
    with engine.connect() as c:
        assert compare_metadata(MigrationContext.configure(c), metadata) == []
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    assert migrate.upgrade(engine) == migrate.head_revision()      # idempotent


def test_a_database_newer_than_the_code_is_refused(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade(engine)
    with engine.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(migrate.SchemaTooNew, match="newer"):
        migrate.upgrade(engine)


def test_finishing_drops_the_input_and_stored_counts_what_a_key_keeps(store):
    mine, other = "m" * 64, "x" * 64
    store.create(a := job(owner=mine))
    store.create(job(owner=mine, created=T0 + 1))
    store.create(job(owner=other, created=T0 + 2))
    assert store.stored(mine, T0) == (2 * len(b"png-bytes"), None)    # two queued inputs
    claimed = store.claim("w", T0, 30)
    assert claimed.id == a.id
    store.finish(claimed, JobState.SUCCEEDED, T0 + 1, T0 + 100, result_key="k", result_bytes=5000)
    assert store.get(a.id, with_image=True).image is None
    assert store.stored(mine, T0 + 2) == (5000 + len(b"png-bytes"), T0 + 100)
    assert store.stored(mine, T0 + 101).bytes == len(b"png-bytes")    # the result expired
    assert store.stored("n" * 64, T0) == (0, None)
