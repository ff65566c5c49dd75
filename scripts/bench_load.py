"""`scripts/bench.py load`: many clients against one server, for --duration seconds.

Starts `python -m app.cli serve` (tiny model, 64x64 inputs, jobs well under a second) with
--keys API keys and the limits given, warms it up with one generation, then runs --clients
asyncio clients, each with one of the keys: POST a PNG, poll every --poll-interval s until the
MP4, repeat. A 429 or 503 must carry Retry-After; the client waits that long (at most until
the deadline). Every request has a timeout; every loop ends by the deadline; loopback only.

Targets: no 5xx, no 429/503 without Retry-After, 202 poll p99 < 50 ms, server RSS at the end
<= 1.10 x after the warm-up. A miss prints MISS and exits 0 (a measurement); errors (server
did not start, warm-up failed) exit 1. The clients share the machine's CPUs with the server,
and so does anything else running: the report shows the CPU time of each, and the server's
own timing of the polls where its /metrics has it. --quick: 8 clients for 8 s.
"""
from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections import Counter

from bench_api import TARGET_POLL_P99_MS, http_job
from bench_common import (BenchError, cpu_s, finish, noise_png, print_table, retry_after_s,
                          rss_kb, server_process, stats_ms)

TARGET_RSS_RATIO = 1.10
START, RESULT = "/v2beta/image-to-video", "/v2beta/image-to-video/result/"
CONFIG = ("clients", "keys", "duration", "frames", "steps", "poll_interval", "job_timeout",
          "request_timeout", "rate_limit", "max_queued", "max_queued_per_key")
BUCKET_RE = re.compile(r"^svd_http_request_duration_seconds_bucket\{(.*)\} (\S+)$", re.M)
LOG_ERROR_RE = re.compile(r"^\S+ \S+ (ERROR|CRITICAL)\s|^Traceback ", re.M)


async def server_poll_buckets(http) -> Counter:
    """le -> count of result polls in the server's own timing (/metrics); empty without it."""
    r, buckets = await http.get("/metrics"), Counter()
    for labels, count in BUCKET_RE.findall(r.text if r.status_code == 200 else ""):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if "/result/" in labels.get("route", ""):
            buckets[labels["le"]] += float(count)
    return buckets


class Load:
    """The clients' shared counters, and one client's loop."""

    def __init__(self, http, keys: list[str], image: bytes, deadline: float, args):
        self.http, self.keys, self.image, self.deadline = http, keys, image, deadline
        self.args = args
        self.post, self.get = Counter(), Counter()       # status code -> count
        self.errors = Counter()                          # "METHOD ExceptionName" -> count
        self.no_retry_after = Counter()                  # "METHOD status" -> count
        self.retry_after, self.poll_ms, self.job_s = [], [], []
        self.bad_mp4 = self.timed_out = self.lost = self.unfinished = 0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    async def pause(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, min(seconds, self.left())))

    async def send(self, counts: Counter, method: str, key: str, url: str, **kw):
        """(response, ms); (None, 0) when it did not answer. 429/503: waits for Retry-After."""
        headers = {"authorization": f"Bearer {key}", **kw.pop("headers", {})}
        t0 = time.perf_counter()
        try:
            r = await self.http.request(method, url, headers=headers, **kw)
        except Exception as exc:                         # timeouts, resets: counted, not fatal
            self.errors[f"{method} {type(exc).__name__}"] += 1
            await self.pause(0.5)
            return None, 0.0
        ms = (time.perf_counter() - t0) * 1000
        counts[r.status_code] += 1
        if r.status_code in (429, 503):
            wait = retry_after_s(r.headers.get("retry-after"))
            if wait is None:
                self.no_retry_after[f"{method} {r.status_code}"] += 1
            else:
                self.retry_after.append(wait)
            await self.pause(max(1.0 if wait is None else wait, 0.05))
        return r, ms

    async def client(self, n: int) -> None:
        key, seed, args = self.keys[n % len(self.keys)], n * 1_000_000, self.args
        files = {"image": ("in.png", self.image, "image/png")}
        while self.left() > 0:
            seed += 1
            r, _ = await self.send(self.post, "POST", key, START, files=files,
                                   data={"seed": str(seed)})
            if r is None or r.status_code in (429, 503):
                continue
            try:
                job_id, t0 = r.json()["id"], time.monotonic()
            except (ValueError, KeyError, TypeError):    # 4xx/5xx (counted), or not {"id"}
                if r.status_code == 200:
                    self.errors["POST 200 without an id"] += 1
                await self.pause(1.0)                    # do not spin
                continue
            while True:
                await self.pause(args.poll_interval)
                if self.left() <= 0:
                    self.unfinished += 1
                    return
                if time.monotonic() - t0 > args.job_timeout:
                    self.timed_out += 1
                    break
                r, ms = await self.send(self.get, "GET", key, RESULT + job_id,
                                        headers={"accept": "video/*"})
                if r is None or r.status_code in (429, 503):
                    continue
                if r.status_code == 202:
                    self.poll_ms.append(ms)
                    continue
                if r.status_code == 200:
                    self.job_s.append(time.monotonic() - t0)
                    self.bad_mp4 += r.content[4:8] != b"ftyp"
                else:
                    self.lost += 1                       # 404, 500: the job is gone
                break


async def sample(http, pid: int, store, until: float, out: dict, every: float = 1.0) -> None:
    """Every `every` s until `until`: server RSS, /healthz latency, queued jobs."""
    from app.jobs.model import JobState
    while time.monotonic() < until:
        out["rss_kb"].append(rss_kb(pid))
        t0 = time.perf_counter()
        try:
            (await http.get("/healthz")).raise_for_status()
            out["healthz_ms"].append((time.perf_counter() - t0) * 1000)
        except Exception as exc:
            out["healthz_errors"].append(repr(exc))
        out["queued"].append(await asyncio.to_thread(store.count, JobState.QUEUED))
        await asyncio.sleep(max(0.0, min(every, until - time.monotonic())))


async def run_load(server, store, image: bytes, args) -> dict:
    """The load, and what it measured (the caller adds RSS, the log and the verdicts)."""
    import httpx
    limits = httpx.Limits(max_connections=args.clients + 8,
                          max_keepalive_connections=args.clients + 8)
    async with httpx.AsyncClient(base_url=server.url, timeout=args.request_timeout,
                                 limits=limits) as http:
        idle = []
        for _ in range(20):                              # /healthz with no load
            t0 = time.perf_counter()
            (await http.get("/healthz")).raise_for_status()
            idle.append((time.perf_counter() - t0) * 1000)
        buckets0 = await server_poll_buckets(http)
        started, cpu0 = time.monotonic(), (cpu_s(server.proc.pid), time.process_time(), cpu_s())
        load = Load(http, server.keys, image, started + args.duration, args)
        samples = {"rss_kb": [], "healthz_ms": [], "queued": [], "healthz_errors": []}
        tasks = [asyncio.create_task(load.client(n)) for n in range(args.clients)]
        tasks.append(asyncio.create_task(
            sample(http, server.proc.pid, store, load.deadline, samples)))
        # A request started just before the deadline may take its whole timeout.
        _, pending = await asyncio.wait(tasks, timeout=args.duration + args.request_timeout + 5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        crashed = [t.exception() for t in tasks if not t.cancelled() and t.exception()]
        if crashed:
            raise BenchError(f"a client failed: {crashed[0]!r}")
        cpu = (cpu_s(server.proc.pid) - cpu0[0], time.process_time() - cpu0[1], cpu_s() - cpu0[2])
        elapsed, buckets = time.monotonic() - started, await server_poll_buckets(http)
    buckets.subtract(buckets0)                           # the warm-up's polls out
    statuses = list(load.post.elements()) + list(load.get.elements())
    return {**{k: getattr(args, k) for k in CONFIG}, "elapsed_s": elapsed, "cpus": os.cpu_count(),
            "server_cpu_s": cpu[0], "client_cpu_s": cpu[1],
            "other_cpu_s": max(0.0, cpu[2] - cpu[0] - cpu[1]),
            "post_status": {str(k): v for k, v in sorted(load.post.items())},
            "get_status": {str(k): v for k, v in sorted(load.get.items())},
            "errors": dict(load.errors), "count_5xx": sum(s >= 500 for s in statuses),
            "refusals": sum(s in (429, 503) for s in statuses),
            "no_retry_after": dict(load.no_retry_after),
            "refusals_without_retry_after": sum(load.no_retry_after.values()),
            "retry_after_min_s": min(load.retry_after, default=None),
            "retry_after_max_s": max(load.retry_after, default=None),
            "completed": len(load.job_s), "bad_mp4": load.bad_mp4, "timed_out": load.timed_out,
            "lost": load.lost, "unfinished": load.unfinished, "cancelled": len(pending),
            "videos_per_min": len(load.job_s) / args.duration * 60, "job_s": stats_ms(load.job_s),
            "poll_ms": stats_ms(load.poll_ms), "server_polls": buckets["+Inf"],
            "server_polls_within_50ms": buckets["0.05"], "healthz_idle_ms": stats_ms(idle),
            "healthz_load_ms": stats_ms(samples["healthz_ms"]),
            "healthz_errors": samples["healthz_errors"], "queued_samples": samples["queued"],
            "queued_max": max(samples["queued"], default=0), "rss_samples_kb": samples["rss_kb"]}


def judge(res: dict, rss_warm: int, rss_end: int, log: str) -> None:
    res.update(rss_warm_kb=rss_warm, rss_end_kb=rss_end, rss_ratio=rss_end / rss_warm,
               rss_max_kb=max(res["rss_samples_kb"] + [rss_end]),
               server_log_errors=len(LOG_ERROR_RE.findall(log)))
    if res["server_log_errors"]:
        res["server_log_tail"] = log[-4000:]
    p99 = res["poll_ms"]["p99"]
    res["pass"] = {"no_5xx": res["count_5xx"] == 0,
                   "retry_after": res["refusals_without_retry_after"] == 0,
                   "poll_p99": p99 is not None and p99 < TARGET_POLL_P99_MS,
                   "rss": res["rss_ratio"] <= TARGET_RSS_RATIO}


def report(res: dict) -> None:
    def counts(d: dict) -> str:
        return ", ".join(f"{k}: {v}" for k, v in d.items()) or "none"

    def ms(s: dict) -> str:
        return (f"{s['p50']:.1f} / {s['p99']:.1f} / {s['max']:.1f} (n={s['n']})" if s["n"]
                else "none")
    ok, mib, polls = res["pass"], 1024, res["server_polls"]
    ra = ("none" if res["retry_after_min_s"] is None
          else f"{res['retry_after_min_s']:g} .. {res['retry_after_max_s']:g} s")
    rows = [  # metric, value, target, passed (None: no target)
        ("setup", f"{res['clients']} clients, {res['keys']} keys, {res['duration']:g} s, "
         f"64x64, {res['frames']} frames x {res['steps']} steps", "", None),
        ("server limits", f"rate {res['rate_limit']}, queued {res['max_queued']}, "
         f"per key {res['max_queued_per_key']}", "", None),
        ("warm-up job s", f"{res['warmup_s']:.2f}", "", None),
        ("POST by status", counts(res["post_status"]), "", None),
        ("GET by status", counts(res["get_status"]), "", None),
        ("client errors", counts(res["errors"]), "", None),
        ("5xx answers", str(res["count_5xx"]), "0", ok["no_5xx"]),
        ("429/503 w/o Retry-After", f"{res['refusals_without_retry_after']} of "
         f"{res['refusals']} (Retry-After {ra})", "0", ok["retry_after"]),
        ("videos completed", f"{res['completed']} ({res['videos_per_min']:.0f}/min; bad MP4 "
         f"{res['bad_mp4']}, lost {res['lost']}, timed out {res['timed_out']}, "
         f"unfinished {res['unfinished']})", "", None),
        ("job s p50 / p99 / max", ms(res["job_s"]), "", None),
        ("poll p50 / p99 / max ms", ms(res["poll_ms"]), f"p99 < {TARGET_POLL_P99_MS:g}",
         ok["poll_p99"]),
        ("polls <= 50 ms, server-side", f"{res['server_polls_within_50ms'] / polls:.2%} of "
         f"{polls:.0f} (its /metrics)" if polls else "n/a (no /metrics)", "", None),
        ("healthz idle p50/p99/max ms", ms(res["healthz_idle_ms"]), "", None),
        ("healthz load p50/p99/max ms", ms(res["healthz_load_ms"]), "", None),
        ("queued jobs (max)", str(res["queued_max"]), "", None),
        ("CPU s: server/clients/other", f"{res['server_cpu_s']:.0f} / {res['client_cpu_s']:.0f} / "
         f"{res['other_cpu_s']:.0f} of {res['elapsed_s'] * res['cpus']:.0f}", "", None),
        ("RSS MiB warm / end / max", f"{res['rss_warm_kb'] / mib:.0f} / "
         f"{res['rss_end_kb'] / mib:.0f} / {res['rss_max_kb'] / mib:.0f} (x{res['rss_ratio']:.3f})",
         f"<= x{TARGET_RSS_RATIO:.2f}", ok["rss"]),
        ("server log errors", str(res["server_log_errors"]), "", None),
    ]
    print_table(f"svd-server load benchmark: {res['clients']} clients, {res['duration']:g} s", rows)


def cmd_load(args) -> int:
    import httpx

    from app.jobs.sql import SqlJobStore
    if args.quick:
        args.clients, args.duration = 8, 8.0
    if args.clients < 1 or args.keys < 1 or args.duration <= 0:
        raise BenchError("--clients, --keys and --duration must be positive")
    image, started = noise_png(64, 64), time.perf_counter()
    env = {"SVD_RATE_LIMIT": args.rate_limit, "SVD_MAX_QUEUED": str(args.max_queued),
           "SVD_MAX_QUEUED_PER_KEY": str(args.max_queued_per_key)}
    with server_process("64x64", args.frames, args.steps, keys=args.keys, env=env) as server:
        store = SqlJobStore.from_url(f"sqlite:///{server.data / 'svd.db'}")
        try:
            with httpx.Client(base_url=server.url, timeout=30,
                              headers={"authorization": f"Bearer {server.keys[0]}"}) as client:
                warm_s = http_job(client, store, image, 1, 0.1, 120, [])["total_s"]
            rss_warm = rss_kb(server.proc.pid)
            print(f"warm-up: {warm_s:.2f} s, RSS {rss_warm / 1024:.0f} MiB; "
                  f"{args.clients} clients for {args.duration:g} s", file=sys.stderr)
            res = asyncio.run(run_load(server, store, image, args))
        finally:
            store.engine.dispose()
        if server.proc.poll() is not None:
            raise BenchError(f"server exited with {server.proc.returncode}:\n{server.tail()}")
        judge(res, rss_warm, rss_kb(server.proc.pid), server.log())
    res.update(warmup_s=warm_s, wall_s=time.perf_counter() - started)
    report(res)
    if res["other_cpu_s"] > 0.1 * res["elapsed_s"] * res["cpus"]:
        print(f"warning: other processes used {res['other_cpu_s']:.0f} CPU s during the load; "
              "the latencies are not this server's alone", file=sys.stderr)
    if res["client_cpu_s"] > 0.6 * res["elapsed_s"]:    # one event loop: one CPU at most
        busy = res["client_cpu_s"] / res["elapsed_s"]
        print(f"warning: the clients' event loop was busy {busy:.0%} of the time: their "
              "latencies include their own queueing", file=sys.stderr)
    if res["server_log_errors"]:
        print(f"server log (tail):\n{res['server_log_tail']}", file=sys.stderr)
    return finish(res, args.json)


def add_parser(sub) -> None:
    p = sub.add_parser("load", help="many concurrent clients: status codes, poll latency, RSS")
    p.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    p.add_argument("--keys", type=int, default=5, help="API keys, shared round-robin (default 5)")
    p.add_argument("--frames", type=int, default=14, help="frames per video (default 14)")
    p.add_argument("--steps", type=int, default=8, help="denoising steps (default 8)")
    p.add_argument("--poll-interval", type=float, default=0.1, help="seconds between polls")
    p.add_argument("--job-timeout", type=float, default=120.0, help="give up on a job after (s)")
    p.add_argument("--request-timeout", type=float, default=10.0, help="per HTTP request (s)")
    p.add_argument("--rate-limit", default="150/10s", help="SVD_RATE_LIMIT (per key; 0: off)")
    p.add_argument("--max-queued", type=int, default=100, help="SVD_MAX_QUEUED")
    p.add_argument("--max-queued-per-key", type=int, default=20, help="SVD_MAX_QUEUED_PER_KEY")
    p.add_argument("--quick", action="store_true", help="8 clients for 8 s (for tests)")
    p.add_argument("--json", help="also write every number to this file")
    p.set_defaults(func=cmd_load)
