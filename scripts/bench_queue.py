"""`scripts/bench.py queue`: the PostgreSQL job queue under many workers, with a fake generator.

Creates a scratch database (svd_bench_<random>) next to --database-url, migrates it, and runs
--workers workers as --processes OS processes ('spawn'), each with its own engine and threads
inside (Python threads alone would share one GIL). The generator is time.sleep(--sleep).

1. Throughput: --jobs jobs are pre-loaded through SqlJobStore.create, then all workers start
   at once and loop claim -> sleep -> finish(SUCCEEDED) until the queue is empty. jobs/s = N /
   (start signal -> last finish). Then the database must show every job succeeded, claimed
   once (attempts = 1), and the workers' own records: no id finished twice, none missing,
   every finish() True.
2. Latency, twice: idle workers wait as Worker.run does (claim, else wait on a wake event for
   at most 1 s); a submitter creates --latency-jobs jobs 10-20 ms apart (create NOTIFYs).
   Submit -> claim latency with one app.jobs.notify.Listener per process, then with none
   (1 s polling only).

Targets: >= 100 jobs/s, 0 duplicates, 0 lost, p99 < 100 ms with NOTIFY. A miss prints MISS
and exits 0 (a measurement); errors (no PostgreSQL, a worker process died) exit 1. The scratch
database is always dropped. --quick: 4 workers in 2 processes, 200 jobs, 50 latency jobs.
"""
from __future__ import annotations

import os
import random
import secrets
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from bench_common import BenchError, finish, percentile, print_table
from bench_queue_workers import Workers, store_rows, tally

TARGET_JOBS_PER_S = 100.0
TARGET_P99_MS = 100.0
DEFAULT_URL = os.environ.get("SVD_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
IMAGE = b"x" * 1000
POOL_MAX = 15            # make_engine's pool: 5 connections + 10 overflow


@contextmanager
def scratch_database(admin_url: str):
    """Yield the URL of a new, migrated database; drop it (WITH FORCE) afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from app.jobs.migrate import upgrade
    from app.jobs.tables import make_engine, sqlalchemy_url
    admin = create_engine(sqlalchemy_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            limit = int(c.exec_driver_sql("SHOW max_connections").scalar())
            used = c.exec_driver_sql("SELECT count(*) FROM pg_stat_activity").scalar()
        name = f"svd_bench_{secrets.token_hex(6)}"
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        raise BenchError(f"no PostgreSQL at {admin_url}: {type(exc).__name__}: {exc}") from exc
    url = make_url(sqlalchemy_url(admin_url)).set(database=name).render_as_string(False)
    try:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url, name, limit - used
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def new_job(owner: str):
    from app.jobs.model import Job, new_job_id
    return Job(id=new_job_id(), owner=owner, seed=42, cfg_scale=1.8, motion_bucket_id=127,
               width=1024, height=576, created_at=time.time(), image=IMAGE)


def throughput(url: str, store, names: list[list[str]], args) -> dict:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:                  # pre-load, 8 submitters
        jobs = [new_job("throughput") for _ in range(args.jobs)]
        list(pool.map(store.create, jobs))
    preload_s = time.perf_counter() - t0
    ids = {j.id for j in jobs}
    with Workers(url, "throughput", names, args, listen=False) as w:
        started = time.time()
        w.start.set()
        records = w.records(300 + 2 * args.jobs * args.sleep / args.workers, stop=False)
    last = max(r["last_finish"] for r in records)
    elapsed = last - started if last else float("nan")
    res = tally(records, ids, store_rows(store, "throughput"))
    res.update(jobs=args.jobs, preload_s=preload_s, preload_jobs_per_s=args.jobs / preload_s,
               elapsed_s=elapsed, jobs_per_s=args.jobs / elapsed if last else 0.0,
               ceiling_jobs_per_s=args.workers / args.sleep if args.sleep else None)
    return res


def latency(url: str, store, names: list[list[str]], args, listen: bool) -> dict:
    from app.jobs.model import JobState
    owner, rng = "latency-notify" if listen else "latency-poll", random.Random(7)
    submitted, create_ms = {}, []
    with Workers(url, "latency", names, args, listen) as w:
        time.sleep(1.5)                      # every worker idle in wake.wait
        due = time.monotonic()
        for _ in range(args.latency_jobs):
            due += rng.uniform(0.010, 0.020)
            time.sleep(max(due - time.monotonic(), 0))
            job, t0 = new_job(owner), time.perf_counter()
            store.create(job)
            submitted[job.id] = time.time()
            create_ms.append((time.perf_counter() - t0) * 1000)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (store.count(JobState.QUEUED)
                                               or store.count(JobState.RUNNING)):
            time.sleep(0.05)
        records = w.records(30)
    res = tally(records, set(submitted), store_rows(store, owner))
    ms = [(t - submitted[i]) * 1000 for r in records for i, t in r["claims"] if i in submitted]
    if not ms:
        raise BenchError(f"{owner}: no job was claimed; {res['errors']} store errors: "
                         f"{res['error_samples']}")
    res.update(jobs=args.latency_jobs, notify=listen, latency_ms=ms, p50_ms=percentile(ms, 0.5),
               p99_ms=percentile(ms, 0.99), max_ms=max(ms), min_ms=min(ms),
               over_500ms=sum(v > 500 for v in ms), create_p50_ms=percentile(create_ms, 0.5))
    return res


def report(res: dict) -> None:
    t, n, p, ok = res["throughput"], res["latency_notify"], res["latency_poll"], res["pass"]
    cfg = res["config"]
    ceiling = f" (ceiling {t['ceiling_jobs_per_s']:.0f})" if t["ceiling_jobs_per_s"] else ""

    def lat(d):
        return (f"{d['p50_ms']:.1f} / {d['p99_ms']:.1f} / {d['max_ms']:.1f} "
                f"(n={len(d['latency_ms'])})")
    rows = [
        ("workers", f"{cfg['workers']} = {cfg['processes']} processes x {cfg['threads']} threads, "
                    f"sleep {cfg['sleep']:g} s", "", None),
        ("pre-load (8 threads)", f"{t['jobs']} jobs in {t['preload_s']:.2f} s "
                                 f"({t['preload_jobs_per_s']:.0f}/s)", "", None),
        ("throughput jobs/s", f"{t['jobs_per_s']:.0f}{ceiling} in {t['elapsed_s']:.2f} s",
         f">= {TARGET_JOBS_PER_S:g}", ok["jobs_per_s"]),
        ("jobs per worker min/max", f"{t['per_worker_min']} / {t['per_worker_max']}", "", None),
        ("duplicates (all phases)", f"{res['duplicates']} (claimed twice {res['claimed_twice']}, "
         f"attempts != 1: {res['attempts_not_1']})", "0", ok["duplicates"]),
        ("lost (all phases)", str(res["lost"]), "0", ok["lost"]),
        ("finish() False", str(res["finish_false"]), "0", ok["finish_false"]),
        ("store errors", f"{res['errors']} {res['error_kinds'] or ''}".strip(), "0", ok["errors"]),
        ("latency NOTIFY p50/p99/max ms", lat(n), f"p99 < {TARGET_P99_MS:g}", ok["p99_notify"]),
        ("latency poll-only p50/p99/max ms", lat(p), "", None),
        ("claims > 500 ms notify / poll", f"{n['over_500ms']} / {p['over_500ms']}", "", None),
        ("empty claims per job notify / poll", f"{n['empty_claims'] / n['jobs']:.1f} / "
                                               f"{p['empty_claims'] / p['jobs']:.1f}", "", None),
    ]
    print_table(f"svd-server queue benchmark (PostgreSQL): {t['jobs']} jobs", rows)


def cmd_queue(args) -> int:
    quick = args.quick
    args.workers = args.workers or (4 if quick else 16)
    args.jobs = args.jobs or (200 if quick else 2000)
    args.latency_jobs = args.latency_jobs or (50 if quick else 300)
    args.processes = args.processes or min(2 if quick else 4, args.workers)
    if min(args.workers, args.jobs, args.latency_jobs, args.processes) < 1 or args.sleep < 0:
        raise BenchError("--workers, --jobs, --latency-jobs, --processes must be positive, "
                         "--sleep not negative")
    if args.processes > args.workers:
        raise BenchError("--processes cannot exceed --workers")
    per, extra = divmod(args.workers, args.processes)
    sizes = [per + (i < extra) for i in range(args.processes)]
    if sizes[0] > POOL_MAX:
        raise BenchError(f"{sizes[0]} threads per process: the store's pool holds {POOL_MAX}; "
                         "use more --processes")
    names = [[f"bench-p{i}-t{j}" for j in range(k)] for i, k in enumerate(sizes)]
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    from app.jobs.sql import SqlJobStore
    with scratch_database(args.database_url) as (url, db_name, free):
        need = args.workers + args.processes + 16
        if need > free:
            raise BenchError(f"PostgreSQL has {free} free connections; this run needs ~{need}")
        store = SqlJobStore.from_url(url)
        try:
            res = {"config": {"workers": args.workers, "processes": args.processes,
                              "threads": max(sizes), "jobs": args.jobs, "sleep": args.sleep,
                              "latency_jobs": args.latency_jobs, "quick": quick,
                              "requeue_expired": args.requeue_expired, "database": db_name,
                              "cpus": os.cpu_count(), "loadavg_1m_before": load_before}}
            res["throughput"] = throughput(url, store, names, args)
            res["latency_notify"] = latency(url, store, names, args, listen=True)
            res["latency_poll"] = latency(url, store, names, args, listen=False)
        finally:
            store.close()
    phases = [res["throughput"], res["latency_notify"], res["latency_poll"]]
    for key in ("duplicates", "claimed_twice", "attempts_not_1", "lost", "finish_false", "errors"):
        res[key] = sum(ph[key] for ph in phases)
    res["error_kinds"] = dict(sum((Counter(ph["error_kinds"]) for ph in phases), Counter()))
    twice = res["duplicates"] + res["claimed_twice"] + res["attempts_not_1"]
    res["pass"] = {"jobs_per_s": res["throughput"]["jobs_per_s"] >= TARGET_JOBS_PER_S,
                   "duplicates": twice == 0,
                   "lost": res["lost"] == 0, "finish_false": res["finish_false"] == 0,
                   "errors": res["errors"] == 0,
                   "p99_notify": res["latency_notify"]["p99_ms"] < TARGET_P99_MS}
    res["wall_s"] = time.perf_counter() - started
    report(res)
    if load_before > 0.25 * (os.cpu_count() or 1):
        print(f"warning: load average {load_before:.1f} on {os.cpu_count()} CPUs before the run: "
              "other processes share the CPUs with PostgreSQL and the workers", file=sys.stderr)
    for ph in phases:
        for sample in ph["error_samples"]:
            print(f"store error: {sample}", file=sys.stderr)
    return finish(res, args.json)


def add_parser(sub) -> None:
    p = sub.add_parser("queue",
                       help="PostgreSQL job queue: throughput, duplicates, wake-up latency")
    p.add_argument("--workers", type=int, help="worker threads in all (default 16; --quick: 4)")
    p.add_argument("--processes", type=int,
                   help="OS processes sharing the workers (default 4; --quick: 2)")
    p.add_argument("--jobs", type=int, help="jobs for the throughput phase (default 2000)")
    p.add_argument("--sleep", type=float, default=0.0,
                   help="seconds a fake job takes (default 0: pure queue throughput)")
    p.add_argument("--latency-jobs", type=int, help="jobs per latency phase (default 300)")
    p.add_argument("--requeue-expired", action="store_true",
                   help="also call requeue_expired before each claim, as Worker.run_once does")
    p.add_argument("--database-url", default=DEFAULT_URL,
                   help="admin URL; the scratch database is created next to it (default "
                        "$SVD_TEST_DATABASE_URL or postgresql://postgres@127.0.0.1:5432/test)")
    p.add_argument("--quick", action="store_true",
                   help="4 workers in 2 processes, 200 jobs, 50 latency jobs (for tests)")
    p.add_argument("--json", help="also write every number to this file")
    p.set_defaults(func=cmd_queue)
