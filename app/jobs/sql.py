"""The job store on a SQL database through SQLAlchemy: SQLite embedded, PostgreSQL to scale.

The tables and the engine are in app/jobs/tables.py.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager

from sqlalchemy import delete, func, literal, or_, select, text, update
from sqlalchemy.engine import Engine

from app.jobs.model import CANCELLED_BY_OWNER, FINISHED_STATES, Job, JobState, WebhookStatus
from app.jobs.store import CRASHED, CancelOutcome, Refusal, Stored, job_batch_key
from app.jobs.tables import jobs, make_engine
from inference.base import MIN_GUIDANCE_SCALE

_FIELDS = [c.name for c in jobs.columns if c.name != "image"]
_SUBMIT_LOCK_ID = 0x5FD5E5     # PostgreSQL advisory lock: bounded submits take turns
NOTIFY_CHANNEL = "svd_jobs"    # PostgreSQL: a new job was queued
CHANGED_CHANNEL = "svd_job_changed"   # PostgreSQL: a job's state or progress changed (its id)
_MANY_CHUNK = 500              # ids per IN (...): well under SQLite's bound on parameters


def _same(column, value):
    """Equal, with unset (NULL) equal only to unset."""
    return column.is_(None) if value is None else column == value


def _row_to_job(row) -> Job:
    data = dict(row._mapping)
    data["state"] = JobState(data["state"])
    if data.get("webhook_status") is not None:
        data["webhook_status"] = WebhookStatus(data["webhook_status"])
    return Job(**data)


class SqlJobStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def from_url(cls, url: str) -> "SqlJobStore":
        return cls(make_engine(url))

    def create(self, job, max_queued=0, max_queued_per_owner=0):
        values = {name: getattr(job, name) for name in _FIELDS}
        values["state"] = job.state.value
        if job.webhook_status is not None:
            values["webhook_status"] = WebhookStatus(job.webhook_status).value
        values["image"] = job.image
        if not (max_queued or max_queued_per_owner):
            with self.engine.begin() as c:
                c.execute(jobs.insert().values(**values))
                self._announce(c)
            return None
        queued = jobs.c.state == JobState.QUEUED.value
        room = []
        if max_queued_per_owner:
            room.append(select(func.count()).where(queued, jobs.c.owner == job.owner)
                        .correlate(None).scalar_subquery() < max_queued_per_owner)
        if max_queued:
            room.append(select(func.count()).where(queued).correlate(None).scalar_subquery()
                        < max_queued)
        names = list(values)
        row = select(*[literal(values[n], jobs.c[n].type).label(n) for n in names]).where(*room)
        with self.engine.begin() as c:
            if c.dialect.name == "postgresql":
                # Under READ COMMITTED two submits could both see room for one: take turns.
                c.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SUBMIT_LOCK_ID})
            inserted = c.execute(jobs.insert().from_select(names, row).returning(jobs.c.id))
            if inserted.first() is not None:
                self._announce(c)
                return None
            if max_queued_per_owner and c.execute(
                    select(func.count()).where(queued, jobs.c.owner == job.owner)
            ).scalar_one() >= max_queued_per_owner:
                return Refusal.OWNER
            return Refusal.TOTAL

    @staticmethod
    def _announce(c) -> None:
        """Wake idle workers on other processes (PostgreSQL); delivered when the insert commits."""
        if c.dialect.name == "postgresql":
            c.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})

    @staticmethod
    def _changed(c, *job_ids: str) -> None:
        """Tell event streams in other processes that these jobs changed (PostgreSQL; see
        app/api/events.py); delivered when the transaction commits."""
        if c.dialect.name == "postgresql":
            for job_id in job_ids:
                c.execute(text("SELECT pg_notify(:channel, :id)"),
                          {"channel": CHANGED_CHANNEL, "id": job_id})

    @contextmanager
    def exclusive(self, name: str):
        """Yields True in at most one process cluster-wide at a time (PostgreSQL advisory
        lock), False elsewhere. On SQLite, one process owns the file: always True."""
        if self.engine.dialect.name != "postgresql":
            yield True
            return
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        with self.engine.connect() as c:
            got = c.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            try:
                yield bool(got)
            finally:
                if got:
                    c.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    c.commit()

    def get(self, job_id, with_image=False):
        cols = [jobs.c[n] for n in _FIELDS] + ([jobs.c.image] if with_image else [])
        with self.engine.connect() as c:
            row = c.execute(select(*cols).where(jobs.c.id == job_id)).first()
        return _row_to_job(row) if row else None

    def get_many(self, job_ids):
        ids, cols, out = list(dict.fromkeys(job_ids)), [jobs.c[n] for n in _FIELDS], {}
        with self.engine.connect() as c:
            for i in range(0, len(ids), _MANY_CHUNK):
                for row in c.execute(select(*cols).where(jobs.c.id.in_(ids[i:i + _MANY_CHUNK]))):
                    out[row.id] = _row_to_job(row)
        return out

    def next_queued(self):
        with self.engine.connect() as c:
            row = c.execute(select(*[jobs.c[n] for n in _FIELDS], jobs.c.image)
                            .where(jobs.c.state == JobState.QUEUED.value)
                            .order_by(jobs.c.created_at, jobs.c.id).limit(1)).first()
        return _row_to_job(row) if row else None

    def claim(self, worker, now, lease_s):
        # One statement: picks the oldest queued job and takes it, or takes nothing. On
        # PostgreSQL, SKIP LOCKED lets many workers claim side by side; SQLite ignores it and
        # serialises writers instead.
        oldest = (select(jobs.c.id).where(jobs.c.state == JobState.QUEUED.value)
                  .order_by(jobs.c.created_at, jobs.c.id).limit(1)
                  .with_for_update(skip_locked=True).scalar_subquery())
        # Claimed and read in one statement: a job is never claimed and then left unread.
        with self.engine.begin() as c:
            row = c.execute(self._take(jobs.c.id == oldest, worker, now, lease_s)).first()
            if row:
                self._changed(c, row.id)
        return _row_to_job(row) if row else None

    def claim_compatible(self, claimed, worker, now, lease_s, limit):
        if limit <= 0:
            return []
        # The same one statement as claim, for up to `limit` jobs whose batch key
        # (app.jobs.store.job_batch_key) is the claimed one's.
        key = job_batch_key(claimed)
        guided = jobs.c.cfg_scale > MIN_GUIDANCE_SCALE      # inference.base.uses_guidance
        fits = (select(jobs.c.id)
                .where(jobs.c.state == JobState.QUEUED.value, jobs.c.width == key.width,
                       jobs.c.height == key.height, _same(jobs.c.num_frames, key.frames),
                       _same(jobs.c.steps, key.steps), guided if key.guided else ~guided)
                .order_by(jobs.c.created_at, jobs.c.id).limit(limit)
                .with_for_update(skip_locked=True)
                # Evaluated once: as a plain IN (subquery), PostgreSQL may run it again for
                # each row, skip the rows this statement just took, and take more than `limit`.
                .cte("fits").prefix_with("MATERIALIZED", dialect="postgresql"))
        with self.engine.begin() as c:
            rows = c.execute(self._take(jobs.c.id.in_(select(fits.c.id)), worker, now,
                                        lease_s)).all()
            self._changed(c, *(r.id for r in rows))
        return sorted((_row_to_job(r) for r in rows), key=lambda j: (j.created_at, j.id))

    @staticmethod
    def _take(which, worker, now, lease_s):
        """queued → running under `worker`, returning the whole row with its image."""
        return (update(jobs)
                .where(which, jobs.c.state == JobState.QUEUED.value)
                .values(state=JobState.RUNNING.value, worker=worker, lease_until=now + lease_s,
                        attempts=jobs.c.attempts + 1, started_at=now)
                .returning(*[jobs.c[n] for n in _FIELDS], jobs.c.image))

    def _update_held(self, claimed, *conditions, changed: bool = True, **values) -> bool:
        stmt = (update(jobs).where(jobs.c.id == claimed.id, jobs.c.worker == claimed.worker,
                                   jobs.c.attempts == claimed.attempts,
                                   jobs.c.state == JobState.RUNNING.value, *conditions)
                .values(**values))
        with self.engine.begin() as c:
            if c.execute(stmt).rowcount != 1:
                return False
            if changed:
                self._changed(c, claimed.id)
            return True

    def heartbeat(self, claimed, lease_until):
        return self._update_held(claimed, lease_until=lease_until, changed=False)

    def set_progress(self, claimed, progress, step=None, total_steps=None):
        values = {"progress": progress}
        if step is not None:
            values.update(step=step, total_steps=total_steps)
        return self._update_held(claimed, jobs.c.cancel_requested.is_(False), **values)

    def cancel(self, job_id, owner, now, expires_at):
        mine = (jobs.c.id == job_id, jobs.c.owner == owner)
        with self.engine.begin() as c:
            if c.execute(update(jobs).where(*mine, jobs.c.state == JobState.QUEUED.value)
                         .values(state=JobState.CANCELLED.value, finished_at=now,
                                 expires_at=expires_at, image=None)).rowcount:
                self._changed(c, job_id)
                return CancelOutcome.CANCELLED
            running = jobs.c.state == JobState.RUNNING.value
            if c.execute(update(jobs).where(*mine, running, jobs.c.step >= jobs.c.total_steps)
                         .values(state=JobState.CANCELLED.value, cancel_requested=True,
                                 finished_at=now, expires_at=expires_at, lease_until=None,
                                 error=CANCELLED_BY_OWNER, image=None)).rowcount:
                self._changed(c, job_id)
                return CancelOutcome.CANCELLED_RUNNING
            if c.execute(update(jobs).where(*mine, running)
                         .values(cancel_requested=True)).rowcount:
                return CancelOutcome.REQUESTED
            state = c.execute(select(jobs.c.state).where(*mine)).scalar()
        return None if state is None else CancelOutcome.FINISHED

    def set_webhook_status(self, job_id, status, attempts):
        with self.engine.begin() as c:
            c.execute(update(jobs).where(jobs.c.id == job_id)
                      .values(webhook_status=WebhookStatus(status).value,
                              webhook_attempts=attempts))

    def pending_webhooks(self, finished_before, limit=100):
        finished = jobs.c.state.in_([s.value for s in FINISHED_STATES])
        with self.engine.connect() as c:
            return list(c.execute(select(jobs.c.id).where(
                finished, jobs.c.webhook_status == WebhookStatus.PENDING.value,
                jobs.c.finished_at < finished_before).limit(limit)).scalars())

    def queue_position(self, job):
        with self.engine.connect() as c:
            ahead = c.execute(select(func.count()).select_from(jobs).where(
                jobs.c.state == JobState.QUEUED.value,
                (jobs.c.created_at < job.created_at)
                | ((jobs.c.created_at == job.created_at) & (jobs.c.id < job.id)))).scalar_one()
        return ahead + 1

    def recent_run_seconds(self, limit=20):
        recent = (select((jobs.c.finished_at - jobs.c.started_at).label("s"))
                  .where(jobs.c.state == JobState.SUCCEEDED.value)
                  .order_by(jobs.c.finished_at.desc()).limit(limit).subquery())
        with self.engine.connect() as c:
            return c.execute(select(func.avg(recent.c.s))).scalar()

    def finish(self, claimed, state, now, expires_at, *, error=None, finish_reason=None,
               result_key=None, result_bytes=None):
        # The input image is dropped here: a finished job never needs it again.
        values = dict(state=state.value, finished_at=now, expires_at=expires_at, error=error,
                      finish_reason=finish_reason, result_key=result_key,
                      result_bytes=result_bytes, lease_until=None, image=None)
        if state == JobState.SUCCEEDED:
            values["progress"] = 1.0
        return self._update_held(claimed, **values)

    def release(self, claimed):
        return self._update_held(claimed, state=JobState.QUEUED.value, worker=None,
                                 lease_until=None)

    def _requeue_where(self, condition, max_attempts, now, expires_at) -> int:
        running = jobs.c.state == JobState.RUNNING.value
        with self.engine.begin() as c:
            failed = c.execute(
                update(jobs).where(running, condition, jobs.c.attempts >= max_attempts)
                .values(state=JobState.FAILED.value, finished_at=now, expires_at=expires_at,
                        lease_until=None, error=CRASHED.format(n=max_attempts), image=None))
            queued = c.execute(
                update(jobs).where(running, condition, jobs.c.attempts < max_attempts)
                .values(state=JobState.QUEUED.value, worker=None, lease_until=None))
        return failed.rowcount + queued.rowcount

    def requeue_expired(self, now, max_attempts, expires_at):
        return self._requeue_where(jobs.c.lease_until < now, max_attempts, now, expires_at)

    def requeue_worker(self, worker, max_attempts, now, expires_at):
        return self._requeue_where(jobs.c.worker == worker, max_attempts, now, expires_at)

    def expired(self, now, limit=100):
        cols = [jobs.c[n] for n in _FIELDS]
        with self.engine.connect() as c:
            rows = c.execute(select(*cols).where(jobs.c.expires_at < now)
                             .order_by(jobs.c.expires_at).limit(limit)).all()
        return [_row_to_job(r) for r in rows]

    def delete(self, job_id):
        with self.engine.begin() as c:
            c.execute(delete(jobs).where(jobs.c.id == job_id))

    def stored(self, owner, now):
        size = func.coalesce(jobs.c.result_bytes, 0) + func.coalesce(func.length(jobs.c.image), 0)
        alive = or_(jobs.c.expires_at.is_(None), jobs.c.expires_at >= now)
        with self.engine.connect() as c:
            total, first = c.execute(select(func.coalesce(func.sum(size), 0),
                                            func.min(jobs.c.expires_at))
                                     .where(jobs.c.owner == owner, alive)).one()
        return Stored(int(total), first)

    def count(self, state, owner=None):
        query = select(func.count()).select_from(jobs).where(jobs.c.state == state.value)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self.engine.connect() as c:
            return c.execute(query).scalar_one()

    def checkpoint(self):
        """SQLite: copy the write-ahead log into the database and empty it, so that rows just
        deleted (with secure_delete, overwritten) leave no copy behind in svd.db-wal."""
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as c:
                c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self):
        self.engine.dispose()
