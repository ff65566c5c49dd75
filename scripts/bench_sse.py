"""`scripts/bench.py sse`: many open event streams, and what they cost another client.

Starts `python -m app.cli serve` with no workers, so that every job stays queued and its
streams wait, as they do behind a long queue. There are --keys API keys for the streams and
one more for the other client; each stream key queues --jobs-per-key generations, the other
client one.

1. The other client polls its job (202) every --poll-interval s for --duration s, with no
   stream open.
2. --streams streams open, spread evenly over the keys and their jobs (--streams 500 --keys 1
   --jobs-per-key 1 --limit 0: all on one job), and each reads its first event. Then each key
   tries --over more streams: the per-key limit (SVD_MAX_STREAMS_PER_KEY = --limit) must answer
   those with 429 and Retry-After. The other client polls again for --duration s while the
   server's CPU time is measured.
3. The streams close; then one more stream per key must be accepted (the slots were freed).

Target: the other client's poll p99 < 50 ms with the streams open. A miss prints MISS and
exits 0 (a measurement); errors (the server did not start, a stream did not open) exit 1. The
streams are plain sockets in this process's event loop; they read little (nothing changes
while the jobs wait), so the client's CPU time stays small. --quick: 200 streams over 2 keys,
5 s per phase.
"""
from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from collections import Counter

from bench_api import TARGET_POLL_P99_MS
from bench_common import (BenchError, cpu_s, finish, noise_png, print_table, retry_after_s,
                          server_process, stats_ms)

START, RESULT = "/v2beta/image-to-video", "/v2beta/image-to-video/result/"
CONFIG = ("streams", "keys", "jobs_per_key", "limit", "over", "duration", "poll_interval")


class Stream:
    """One raw HTTP/1.1 connection to the events endpoint."""

    def __init__(self, status: int, headers: dict, body: bytes, reader=None, writer=None):
        self.status, self.headers, self.body = status, headers, body
        self.reader, self.writer = reader, writer
        self.drain: asyncio.Task | None = None
        self.closed_by_server = False

    async def _drain(self) -> None:
        """Read (and drop) what comes until the server closes: keep-alive comments only,
        while the job waits."""
        try:
            while await self.reader.read(4096):
                pass
            self.closed_by_server = True
        except (ConnectionError, asyncio.CancelledError):
            pass

    async def close(self) -> None:
        if self.drain is not None:
            self.drain.cancel()
            await asyncio.gather(self.drain, return_exceptions=True)
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except ConnectionError:
                pass


async def open_stream(host: str, port: int, key: str, job_id: str, timeout: float) -> Stream:
    """GET …/events; on 200, read up to the end of the first event and keep the connection
    open; otherwise read the body and close."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {RESULT}{job_id}/events HTTP/1.1\r\nhost: {host}:{port}\r\n"
                     f"authorization: Bearer {key}\r\naccept: text/event-stream\r\n\r\n"
                     .encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if status == 200:
            first = await asyncio.wait_for(reader.readuntil(b"\n\n"), timeout)
            stream = Stream(status, headers, first, reader, writer)
            stream.drain = asyncio.create_task(stream._drain())
            return stream
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
    except BaseException:
        writer.close()
        raise
    writer.close()
    return Stream(status, headers, body)


async def poll(http, key: str, job_id: str, seconds: float, interval: float) -> dict:
    """The other client: GET its queued job every `interval` s; latency of each 202."""
    ms, statuses, deadline = [], Counter(), time.monotonic() + seconds
    headers = {"authorization": f"Bearer {key}", "accept": "video/*"}
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        r = await http.get(RESULT + job_id, headers=headers)
        statuses[r.status_code] += 1
        if r.status_code == 202:
            ms.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(max(0.0, min(interval, deadline - time.monotonic())))
    return {"ms": ms, "status": {str(k): v for k, v in sorted(statuses.items())}}


async def run_sse(server, image: bytes, args) -> dict:
    import httpx

    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    port = int(port)
    stream_keys, other = server.keys[:-1], server.keys[-1]
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        async def submit(key: str, seed: int) -> str:
            r = await http.post(START, headers={"authorization": f"Bearer {key}"},
                                files={"image": ("in.png", image, "image/png")},
                                data={"seed": str(seed)})
            if r.status_code != 200:
                raise BenchError(f"POST answered {r.status_code}: {r.text[:300]}")
            return r.json()["id"]

        jobs = {key: [await submit(key, 1 + k * 100 + j) for j in range(args.jobs_per_key)]
                for k, key in enumerate(stream_keys)}
        mine = await submit(other, 999)
        for _ in range(5):                                   # warm the poll path
            await http.get(RESULT + mine, headers={"authorization": f"Bearer {other}"})

        def phase_cpu(t0: float, c0: tuple) -> dict:
            elapsed = time.monotonic() - t0
            return {"elapsed_s": elapsed,
                    "server_cpu_pct": 100 * (cpu_s(server.proc.pid) - c0[0]) / elapsed,
                    "client_cpu_pct": 100 * (time.process_time() - c0[1]) / elapsed}

        # 1. No streams.
        t0, c0 = time.monotonic(), (cpu_s(server.proc.pid), time.process_time())
        idle = await poll(http, other, mine, args.duration, args.poll_interval)
        idle.update(phase_cpu(t0, c0))

        # 2. The streams, then the ones over the limit, then the other client's polls.
        plan = [(stream_keys[i % len(stream_keys)], i // len(stream_keys))
                for i in range(args.streams)]
        gate = asyncio.Semaphore(50)                          # no connection stampede

        async def opened(key: str, n: int) -> Stream:
            async with gate:
                job_id = jobs[key][n % len(jobs[key])]
                return await open_stream(host, port, key, job_id, args.open_timeout)

        t_open = time.monotonic()
        results = await asyncio.gather(*(opened(k, n) for k, n in plan), return_exceptions=True)
        open_s = time.monotonic() - t_open
        streams = [s for s in results if isinstance(s, Stream) and s.status == 200]
        failures = Counter(type(s).__name__ if isinstance(s, BaseException) else str(s.status)
                           for s in results if not (isinstance(s, Stream) and s.status == 200))
        try:
            if failures:
                raise BenchError(f"{len(failures)} kind(s) of stream failed to open: "
                                 f"{dict(failures)}\n{server.tail()}")
            first_events = Counter(s.body.split(b"event: ", 1)[-1].split(b"\n", 1)[0].decode()
                                   for s in streams)
            over = await asyncio.gather(*(opened(k, 0) for k in stream_keys
                                          for _ in range(args.over)), return_exceptions=True)
            over_ok = [s for s in over if isinstance(s, Stream) and s.status == 200]
            refused = [s for s in over if isinstance(s, Stream) and s.status == 429]
            over_errors = [repr(s) for s in over if isinstance(s, BaseException)]
            waits = [retry_after_s(s.headers.get("retry-after")) for s in refused]
            named = sum(json.loads(s.body or b"{}").get("name") == "rate_limit_exceeded"
                        for s in refused)
            streams += over_ok
            await asyncio.sleep(1.0)                         # settle after the opening burst
            t0, c0 = time.monotonic(), (cpu_s(server.proc.pid), time.process_time())
            busy = await poll(http, other, mine, args.duration, args.poll_interval)
            busy.update(phase_cpu(t0, c0))
            closed_early = sum(s.closed_by_server for s in streams)
        finally:
            await asyncio.gather(*(s.close() for s in streams), return_exceptions=True)

        # 3. Slots come back once streams close.
        deadline, again = time.monotonic() + 10, []
        while time.monotonic() < deadline:
            again = await asyncio.gather(*(opened(k, 0) for k in stream_keys),
                                         return_exceptions=True)
            await asyncio.gather(*(s.close() for s in again if isinstance(s, Stream)))
            if all(isinstance(s, Stream) and s.status == 200 for s in again):
                break
            await asyncio.sleep(0.2)
        reopened = sum(isinstance(s, Stream) and s.status == 200 for s in again)

    return {**{k: getattr(args, k) for k in CONFIG}, "cpus": os.cpu_count(),
            "opened": len(streams) - len(over_ok), "open_s": open_s,
            "first_events": dict(first_events), "over_tried": len(over),
            "over_accepted": len(over_ok), "over_refused_429": len(refused),
            "over_errors": over_errors, "refused_with_error_json": named,
            "refused_without_retry_after": sum(w is None for w in waits),
            "retry_after_s": sorted({w for w in waits if w is not None}),
            "closed_by_server": closed_early, "reopened_after_close": reopened,
            "poll_idle_ms": stats_ms(idle["ms"]), "poll_streams_ms": stats_ms(busy["ms"]),
            "poll_idle_status": idle["status"], "poll_streams_status": busy["status"],
            "server_cpu_idle_pct": idle["server_cpu_pct"],
            "server_cpu_streams_pct": busy["server_cpu_pct"],
            "client_cpu_streams_pct": busy["client_cpu_pct"]}


def judge(res: dict) -> None:
    p99 = res["poll_streams_ms"]["p99"]
    expect_refused = res["keys"] * res["over"] if res["limit"] else 0
    res["pass"] = {"poll_p99": p99 is not None and p99 < TARGET_POLL_P99_MS,
                   "over_limit_refused": res["over_refused_429"] == expect_refused
                   and res["refused_without_retry_after"] == 0
                   and res["refused_with_error_json"] == res["over_refused_429"],
                   "slots_freed": res["reopened_after_close"] == res["keys"]}


def report(res: dict) -> None:
    def ms(s: dict) -> str:
        return (f"{s['p50']:.1f} / {s['p99']:.1f} / {s['max']:.1f} (n={s['n']})" if s["n"]
                else "none")
    ok = res["pass"]
    limit = res["limit"] or "none"
    rows = [  # metric, value, target, passed (None: no target)
        ("setup", f"{res['opened']} streams, {res['keys']} keys x {res['jobs_per_key']} "
         f"queued job(s), limit {limit} per key, {res['duration']:g} s per phase", "", None),
        ("streams opened in", f"{res['open_s']:.2f} s; first events "
         f"{', '.join(f'{k}: {v}' for k, v in res['first_events'].items())}", "", None),
        ("poll p50/p99/max ms, 0 streams", ms(res["poll_idle_ms"]), "", None),
        (f"poll p50/p99/max ms, {res['opened']} streams", ms(res["poll_streams_ms"]),
         f"p99 < {TARGET_POLL_P99_MS:g}", ok["poll_p99"]),
        ("server CPU % of a core", f"{res['server_cpu_idle_pct']:.0f} without streams, "
         f"{res['server_cpu_streams_pct']:.0f} with", "", None),
        ("client CPU % with streams", f"{res['client_cpu_streams_pct']:.0f}", "", None),
        ("streams beyond the limit", f"{res['over_refused_429']} of {res['over_tried']} got 429 "
         f"(Retry-After {res['retry_after_s'] or '-'} s; {res['refused_without_retry_after']} "
         f"without), {res['over_accepted']} accepted", "all 429" if res["limit"] else "",
         ok["over_limit_refused"]),
        ("accepted again after closing", f"{res['reopened_after_close']} of {res['keys']} keys",
         f"{res['keys']}", ok["slots_freed"]),
        ("closed by the server early", str(res["closed_by_server"]), "", None),
    ]
    print_table(f"svd-server event streams benchmark: {res['opened']} streams", rows)


def cmd_sse(args) -> int:
    if args.quick:
        args.streams, args.keys, args.duration = 200, 2, 5.0
    if args.streams < 1 or args.keys < 1 or args.jobs_per_key < 1 or args.duration <= 0:
        raise BenchError("--streams, --keys, --jobs-per-key and --duration must be positive")
    if args.limit is None:
        args.limit = -(-args.streams // args.keys)            # each key just fits
    if args.limit and args.limit * args.keys < args.streams:
        raise BenchError(f"--limit {args.limit} x --keys {args.keys} < --streams {args.streams}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)   # one socket per stream, both ends
    want = 2 * (args.streams + args.keys * args.over) + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    env = {"SVD_WORKERS": "0", "SVD_MAX_STREAMS_PER_KEY": str(args.limit),
           "SVD_MAX_QUEUED": "0", "SVD_MAX_QUEUED_PER_KEY": "0", "SVD_RATE_LIMIT": "0",
           "SVD_MAX_CONNECTIONS": str(max(1000, want))}
    started = time.perf_counter()
    with server_process("64x64", 4, 2, keys=args.keys + 1, env=env) as server:
        print(f"{args.streams} streams over {args.keys} keys, {args.duration:g} s per phase",
              file=sys.stderr)
        res = asyncio.run(run_sse(server, noise_png(64, 64), args))
        if server.proc.poll() is not None:
            raise BenchError(f"server exited with {server.proc.returncode}:\n{server.tail()}")
    judge(res)
    res["wall_s"] = time.perf_counter() - started
    report(res)
    return finish(res, args.json)


def add_parser(sub) -> None:
    p = sub.add_parser("sse", help="many open event streams: another client's poll latency, "
                                   "server CPU, the per-key stream limit")
    p.add_argument("--streams", type=int, default=500, help="streams held open (default 500)")
    p.add_argument("--keys", type=int, default=5, help="keys the streams are spread over (5)")
    p.add_argument("--jobs-per-key", type=int, default=1, help="queued jobs per key (1)")
    p.add_argument("--limit", type=int, default=None,
                   help="SVD_MAX_STREAMS_PER_KEY (default: streams / keys; 0: no limit)")
    p.add_argument("--over", type=int, default=5, help="streams each key tries beyond its "
                                                      "limit (default 5)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per phase (15)")
    p.add_argument("--poll-interval", type=float, default=0.05, help="other client's polls (s)")
    p.add_argument("--open-timeout", type=float, default=60.0, help="per stream to open (s)")
    p.add_argument("--quick", action="store_true", help="200 streams over 2 keys, 5 s phases")
    p.add_argument("--json", help="also write every number to this file")
    p.set_defaults(func=cmd_sse)
