"""Worker processes for `scripts/bench.py queue`, and the tally of what they did.

`serve` runs in one OS process holding several worker threads. Each process opens its own
engine (SqlJobStore.from_url), as a real worker process does, and reports what its threads did
through a multiprocessing queue: the ids each worker finished (and when it claimed them),
finish() calls that returned False, claims that found nothing, and every exception the store
raised. The generator is faked by time.sleep.

Two loops, one per phase:
- drain: claim -> sleep -> finish(SUCCEEDED) until the queue is empty (throughput);
- idle: as Worker.run: claim, or else wait on the process's wake event (set by an
  app.jobs.notify.Listener, when there is one) for at most POLL_S, then clear it (latency).

`Workers` starts and collects those processes; `tally` checks their records against the
database.
"""
from __future__ import annotations

import multiprocessing
import queue
import threading
import time
import traceback
from collections import Counter

from bench_common import BenchError

LEASE_S = 600.0          # nothing expires during a run
RESULT_TTL_S = 3600.0
POLL_S = 1.0             # WorkerConfig.idle_poll_s
MAX_ERRORS = 50          # per thread: past this, the thread gives up


class Record:
    """What one worker thread did."""

    def __init__(self, name: str):
        self.name = name
        self.claims: list[tuple[str, float]] = []     # (job id, time.time() after claim)
        self.finished: list[str] = []                 # finish() returned True
        self.refused: list[str] = []                  # finish() returned False
        self.errors: list[str] = []
        self.empty = 0                                # claims that found nothing
        self.last_finish = 0.0

    def error(self, exc: BaseException) -> bool:
        """Note an exception; True while the thread should carry on."""
        self.errors.append(f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
        return len(self.errors) < MAX_ERRORS

    def as_dict(self) -> dict:
        return dict(vars(self))


def _run_job(store, rec: Record, job, sleep_s: float) -> None:
    from app.jobs.model import JobState
    rec.claims.append((job.id, time.time()))
    if sleep_s:
        time.sleep(sleep_s)
    now = time.time()
    if store.finish(job, JobState.SUCCEEDED, now, now + RESULT_TTL_S, finish_reason="SUCCESS",
                    result_key=job.id):
        rec.finished.append(job.id)
    else:
        rec.refused.append(job.id)
    rec.last_finish = time.time()


def _claim(store, rec: Record, requeue: bool):
    now = time.time()
    if requeue:                          # what Worker.run_once does before each claim
        store.requeue_expired(now, 3, now + RESULT_TTL_S)
    return store.claim(rec.name, now, LEASE_S)


def drain(store, rec: Record, sleep_s: float, requeue: bool, start, stop) -> None:
    from app.jobs.model import JobState
    start.wait()
    while not stop.is_set():
        try:
            job = _claim(store, rec, requeue)
            if job is not None:
                _run_job(store, rec, job, sleep_s)
                continue
            rec.empty += 1
            if store.count(JobState.QUEUED) == 0:
                return                   # None can also mean: the rest are being claimed
        except Exception as exc:         # noqa: BLE001 - counted and reported, not fatal
            if not rec.error(exc):
                return
            time.sleep(0.05)


def idle(store, rec: Record, sleep_s: float, requeue: bool, wake: threading.Event, stop) -> None:
    while not stop.is_set():
        try:
            job = _claim(store, rec, requeue)
            if job is None:
                rec.empty += 1
                wake.wait(POLL_S)
                wake.clear()
            else:
                _run_job(store, rec, job, sleep_s)
        except Exception as exc:         # noqa: BLE001
            if not rec.error(exc):
                return
            time.sleep(0.05)


def serve(index: int, url: str, phase: str, names: list[str], sleep_s: float, listen: bool,
          requeue: bool, start, stop, out) -> None:
    """Process entry point: ready -> (start) -> work -> ("done", records) on `out`."""
    try:
        from app.jobs.notify import Listener
        from app.jobs.sql import SqlJobStore
        store = SqlJobStore.from_url(url)
        # One connection per thread now, so that connecting is not part of the timing.
        conns = [store.engine.connect() for _ in names]
        for c in conns:
            c.exec_driver_sql("SELECT 1")
            c.close()
        wake, listener = threading.Event(), None
        if listen:
            listener = Listener(url, wake).start()
            if not listener.connected.wait(15):
                raise RuntimeError("the notify listener did not connect in 15 s")
        records = [Record(n) for n in names]
        loop, until = (drain, start) if phase == "throughput" else (idle, wake)
        threads = [threading.Thread(target=loop, args=(store, r, sleep_s, requeue, until, stop))
                   for r in records]
        for t in threads:
            t.start()
        out.put(("ready", index, None))
        if phase != "throughput":
            stop.wait()
            wake.set()                   # idle threads notice the stop at once
        for t in threads:
            t.join()
        if listener is not None:
            listener.stop()
        store.close()
        out.put(("done", index, [r.as_dict() for r in records]))
    except BaseException:                # noqa: BLE001 - the parent reports it and exits 1
        out.put(("crashed", index, traceback.format_exc()))


class Workers:
    """--processes spawned processes running bench_queue_workers.serve for one phase."""

    def __init__(self, url: str, phase: str, names: list[list[str]], args, listen: bool):
        ctx = multiprocessing.get_context("spawn")
        self.start, self.stop, self.out = ctx.Event(), ctx.Event(), ctx.Queue()
        self.procs = [ctx.Process(target=serve, daemon=True, args=(
            i, url, phase, group, args.sleep, listen, args.requeue_expired, self.start, self.stop,
            self.out)) for i, group in enumerate(names)]

    def __enter__(self):
        try:
            for p in self.procs:
                p.start()
            self._collect("ready", 120)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()

    def _collect(self, kind: str, timeout: float) -> list:
        got, deadline = [], time.monotonic() + timeout
        while len(got) < len(self.procs):
            try:
                what, index, payload = self.out.get(timeout=1.0)
            except queue.Empty:
                dead = [p.exitcode for p in self.procs if p.exitcode not in (None, 0)]
                if dead:
                    raise BenchError(f"a worker process died (exit code {dead[0]})") from None
                if time.monotonic() > deadline:
                    raise BenchError(f"worker processes not {kind} after {timeout:.0f} s") from None
                continue
            if what == "crashed":
                raise BenchError(f"worker process {index} failed:\n{payload}")
            got.append(payload)
        return got

    def records(self, timeout: float, stop: bool = True) -> list[dict]:
        """Every thread's Record (as a dict) once all processes are done; `stop`: tell them
        to stop first (else they stop by themselves: the queue is empty)."""
        if stop:
            self.stop.set()
        return [rec for recs in self._collect("done", timeout) for rec in recs]


def store_rows(store, owner: str) -> dict[str, tuple[str, int]]:
    """id -> (state, attempts) of a phase's jobs, as the database has them."""
    from sqlalchemy import text
    with store.engine.connect() as c:
        rows = c.execute(text("SELECT id, state, attempts FROM jobs WHERE owner = :o"),
                         {"o": owner})
        return {i: (state, attempts) for i, state, attempts in rows}


def tally(records: list[dict], ids: set[str], db: dict[str, tuple[str, int]]) -> dict:
    """Duplicates, lost jobs, refused finishes and errors, from the workers and the database.
    Lost: not both finished by a worker and succeeded in the database."""
    finished = Counter(i for r in records for i in r["finished"])
    claimed = Counter(i for r in records for i, _ in r["claims"])
    errors = [e for r in records for e in r["errors"]]
    succeeded = {i for i, (state, _) in db.items() if state == "succeeded"}
    return {"rows": len(db), "succeeded_rows": len(succeeded),
            "attempts_not_1": sum(a != 1 for _, a in db.values()),
            "finished_unique": len(set(finished) & ids),
            "duplicates": sum(n - 1 for n in finished.values() if n > 1),
            "claimed_twice": sum(n - 1 for n in claimed.values() if n > 1),
            "lost": len(ids - (set(finished) & succeeded)),
            "finish_false": sum(len(r["refused"]) for r in records),
            "empty_claims": sum(r["empty"] for r in records),
            "unknown_ids": len(set(finished) - ids), "errors": len(errors),
            "error_kinds": dict(Counter(e.split(":")[0] for e in errors)),
            "error_samples": sorted(set(errors))[:5],
            "per_worker_min": min(len(r["finished"]) for r in records),
            "per_worker_max": max(len(r["finished"]) for r in records)}
