"""`scripts/bench.py attack`: another client's latency while an attacker abuses connections.

Starts `python -m app.cli serve` with no workers (so the one job queued for the polls stays
queued) and SVD_REQUEST_TIMEOUT_S = --request-timeout, then runs one phase after another,
--phase-s seconds each:

    rest    no attack
    header  one connection at a time streams a header --mb MiB long at full speed, no key
            (a new connection as soon as the server closes one)
    url     the same, in the request line
    slow    --slow connections send half a head, then a header line a second; --slow-bodies
            more send a whole head with the key and half a body, then a byte a second
            (each reconnects when the server closes it)
    all     the three at once

The attacker is a separate process (asyncio, stdlib only: this file run with --attacker).
Meanwhile the other client, in this process, alternates GET /healthz and a poll of its queued
job (GET /v2beta/image-to-video/result/{id}, 202) every --interval s, each on a new
connection, and the server's RSS is sampled. A request that fails counts with the time it
took, and as an error.

Targets: /healthz and poll p99 < 50 ms in every phase; every oversized head refused (431)
before the attacker sent it all; slow heads and bodies closed by the server. A miss prints
MISS and exits 0 (a measurement); errors (server did not start) exit 1. The attacker, the
client and the server share the machine's CPUs, and so does anything else running: the report
shows the server's and the whole machine's CPU time in each phase (a miss at rest means the
machine was busy elsewhere). --quick: 3 s phases, 1 s request timeout.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter

MIB = 1024 * 1024
RESULT = "/v2beta/image-to-video/result/"
PHASES = {"rest": (), "header": ("header",), "url": ("url",), "slow": ("slow",),
          "all": ("header", "url", "slow")}
SETTLE_S = 0.5              # the attack builds up before the client measures
CLIENT_TIMEOUT_S = 5.0


# The attacker (its own process).

def _status(task: asyncio.Task) -> str:
    """What the server said on a connection: its status code, "closed" without an answer,
    "none" while it is still open."""
    if not task.done():
        return "none"
    if task.cancelled() or task.exception() is not None:
        return "closed"
    first = task.result()
    return first.split(b" ", 2)[1].decode() if first.startswith(b"HTTP/1.") else "closed"


async def _connect(port: int, deadline: float, out: dict):
    try:
        conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port),
                                      max(0.01, deadline - time.monotonic()))
    except (OSError, asyncio.TimeoutError):
        out["connect_errors"] += 1
        await asyncio.sleep(0.05)
        return None
    out["connections"] += 1
    return conn


async def stream(kind: str, port: int, size: int, deadline: float, out: dict) -> None:
    """A request line or a header `size` bytes long, written as fast as the socket takes it."""
    start, end = {"header": (b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Pad: ", b"\r\n\r\n"),
                  "url": (b"GET /healthz?pad=", b" HTTP/1.1\r\nHost: bench\r\n\r\n")}[kind]
    chunk = b"a" * 65536
    while time.monotonic() < deadline:
        if (conn := await _connect(port, deadline, out)) is None:
            continue
        reader, writer = conn
        answer, sent = asyncio.create_task(reader.read(200)), 0
        try:
            writer.write(start)
            while sent < size and not answer.done() and time.monotonic() < deadline:
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), max(0.01, deadline - time.monotonic()))
                sent += len(chunk)
            if sent >= size:                    # all of it went in: finish the request
                writer.write(end)
                out["sent_whole"] += 1
            await asyncio.wait_for(asyncio.shield(answer), max(0.01, min(
                2.0, deadline - time.monotonic())))
        except (OSError, asyncio.TimeoutError):
            pass
        out["answers"][_status(answer)] += 1
        out["max_sent_bytes"] = max(out["max_sent_bytes"], sent)
        answer.cancel()
        writer.close()


async def slow(port: int, first: bytes, drip: bytes, deadline: float, out: dict) -> None:
    """`first`, then `drip` once a second, until the server closes the connection."""
    while time.monotonic() < deadline:
        if (conn := await _connect(port, deadline, out)) is None:
            continue
        reader, writer = conn
        answer, t0 = asyncio.create_task(reader.read(200)), time.monotonic()
        try:
            writer.write(first)
            while not answer.done() and time.monotonic() < deadline:
                left = deadline - time.monotonic()
                await asyncio.wait({answer}, timeout=min(1.0, max(0.01, left)))
                if not answer.done():
                    writer.write(drip)
        except OSError:
            pass
        status = _status(answer)
        if status == "none":
            out["open_at_end"] += 1
        else:
            out["closed_by_server"] += 1
            out["close_s"].append(time.monotonic() - t0)
            out["answers"][status] += 1
        answer.cancel()
        writer.close()


async def attack(args) -> dict:
    deadline = time.monotonic() + args.seconds
    outs, tasks = {}, []
    for kind in args.attacker.split(","):
        out = outs[kind] = {"connections": 0, "connect_errors": 0, "answers": Counter()}
        if kind in ("header", "url"):
            out.update(sent_whole=0, max_sent_bytes=0)
            tasks.append(stream(kind, args.port, args.mb * MIB, deadline, out))
        else:
            out.update(closed_by_server=0, open_at_end=0, close_s=[])
            head = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n"
            tasks += [slow(args.port, head, b"X-Slow: 1\r\n", deadline, out)
                      for _ in range(args.slow)]
            post = (f"POST /v2beta/image-to-video HTTP/1.1\r\nHost: bench\r\n"
                    f"Authorization: Bearer {args.key}\r\n"
                    "Content-Type: multipart/form-data; boundary=b\r\n"
                    f"Content-Length: {MIB}\r\n\r\n--b\r\n").encode()
            tasks += [slow(args.port, post, b"a", deadline, out) for _ in range(args.slow_bodies)]
    await asyncio.gather(*tasks)
    for out in outs.values():
        out["answers"] = dict(out["answers"])
        if "close_s" in out:
            s = sorted(out.pop("close_s"))
            out["close_s_median"] = s[len(s) // 2] if s else None
            out["close_s_max"] = s[-1] if s else None
    return outs


def attacker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="the attacker side of `bench.py attack`")
    p.add_argument("--attacker", required=True, help="comma-separated: header, url, slow")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--mb", type=int, default=64)
    p.add_argument("--slow", type=int, default=300)
    p.add_argument("--slow-bodies", type=int, default=5)
    p.add_argument("--key", default="")
    args = p.parse_args(argv)
    print(json.dumps(asyncio.run(attack(args))))
    return 0


# The benchmark (bench.py attack).

def measure(server, key: str, job_id: str, seconds: float, interval: float) -> dict:
    """/healthz and poll latencies (ms) and the server's RSS for `seconds`."""
    import httpx

    from bench_common import rss_kb
    lat = {"healthz": [], "poll": []}
    errors, rss, statuses = Counter(), [], Counter()
    paths = {"healthz": ("/healthz", {}),
             "poll": (RESULT + job_id, {"authorization": f"Bearer {key}"})}
    # No keep-alive: every request on a new connection, as a client that comes and goes.
    with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S,
                      limits=httpx.Limits(max_keepalive_connections=0)) as http:
        end, n = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            what = ("healthz", "poll")[n % 2]
            n += 1
            path, headers = paths[what]
            t0 = time.perf_counter()
            try:
                statuses[f"{what} {http.get(path, headers=headers).status_code}"] += 1
            except httpx.HTTPError as exc:
                errors[f"{what} {type(exc).__name__}"] += 1
            lat[what].append((time.perf_counter() - t0) * 1000)
            if n % 10 == 0:
                rss.append(rss_kb(server.proc.pid))
            time.sleep(interval)
    rss.append(rss_kb(server.proc.pid))
    return {"healthz_ms": lat["healthz"], "poll_ms": lat["poll"], "errors": dict(errors),
            "statuses": dict(statuses), "rss_kb": rss}


def run_phase(server, name: str, args) -> dict:
    from app.child_process import popen_kwargs
    from bench_common import cpu_s, stats_ms
    kinds, proc = PHASES[name], None
    cpu0 = (cpu_s(server.proc.pid), cpu_s())
    if kinds:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--attacker", ",".join(kinds),
             "--port", server.url.rsplit(":", 1)[1], "--seconds", str(SETTLE_S + args.phase_s),
             "--mb", str(args.mb), "--slow", str(args.slow), "--slow-bodies",
             str(args.slow_bodies), "--key", server.keys[1]],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, **popen_kwargs())
        time.sleep(SETTLE_S)
    m = measure(server, server.keys[0], args.job_id, args.phase_s, args.interval)
    cpu = (cpu_s(server.proc.pid) - cpu0[0], cpu_s() - cpu0[1])
    attack_stats = {}
    if proc is not None:
        try:
            out, _ = proc.communicate(timeout=30)
            attack_stats = json.loads(out)
        except (subprocess.TimeoutExpired, ValueError) as exc:
            proc.kill()
            proc.wait(10)
            attack_stats = {"error": repr(exc)}
    return {"healthz_ms": stats_ms(m["healthz_ms"]), "poll_ms": stats_ms(m["poll_ms"]),
            "errors": m["errors"], "statuses": m["statuses"],
            "rss_max_kb": max(m["rss_kb"]), "rss_end_kb": m["rss_kb"][-1],
            "server_cpu_s": cpu[0], "machine_cpu_s": cpu[1], "attack": attack_stats}


def judge(res: dict, target_ms: float) -> None:
    ok = {}
    for name, ph in res["phases"].items():
        ok[f"{name}_p99"] = all(ph[k]["p99"] is not None and ph[k]["p99"] < target_ms
                                for k in ("healthz_ms", "poll_ms")) and not ph["errors"]
        for kind, a in ph["attack"].items():
            if kind in ("header", "url"):
                ok[f"{name}_{kind}_refused"] = (a.get("answers", {}).get("431", 0) > 0
                                                and a.get("sent_whole", 1) == 0)
            elif kind == "slow":
                ok[f"{name}_slow_closed"] = a.get("closed_by_server", 0) > 0
        if "error" in ph["attack"]:
            ok[f"{name}_attacker"] = False
    res["pass"] = ok


def report(res: dict, target_ms: float) -> None:
    def ms(s: dict) -> str:
        return f"{s['p50']:.1f} / {s['p99']:.1f}" if s["n"] else "none"

    ok, rows = res["pass"], [
        ("setup", f"{res['phase_s']:g} s phases, request timeout {res['request_timeout_s']:g} s, "
         f"{res['mb']} MiB heads, {res['slow']} slow heads + {res['slow_bodies']} slow bodies",
         "", None),
        ("RSS MiB at rest", f"{res['rss_rest_kb'] / 1024:.0f}", "", None)]
    for name, ph in res["phases"].items():
        rows.append((f"{name}: healthz / poll p50 / p99 ms",
                     f"{ms(ph['healthz_ms'])}  |  {ms(ph['poll_ms'])}"
                     + (f"  errors {ph['errors']}" if ph["errors"] else ""),
                     f"p99 < {target_ms:g}", ok[f"{name}_p99"]))
        rows.append((f"{name}: RSS MiB max; CPU s", f"{ph['rss_max_kb'] / 1024:.0f}; server "
                     f"{ph['server_cpu_s']:.1f}, whole machine {ph['machine_cpu_s']:.1f} of "
                     f"{res['cpus'] * (res['phase_s'] + SETTLE_S):.0f}", "", None))
        for kind, a in ph["attack"].items():
            if kind == "error":
                rows.append((f"{name}: attacker", str(a), "", False))
            elif kind in ("header", "url"):
                rows.append((f"{name}: {kind} attacker",
                             f"{a['connections']} connections, answers {a['answers']}, at most "
                             f"{a['max_sent_bytes'] / MIB:.1f} MiB written on one (socket "
                             "buffers included)",
                             "all 431", ok[f"{name}_{kind}_refused"]))
            else:
                med = a["close_s_median"]
                rows.append((f"{name}: slow attacker",
                             f"{a['connections']} connections, {a['closed_by_server']} closed "
                             f"by the server (median after "
                             f"{'-' if med is None else f'{med:.1f}'} s), answers "
                             f"{a['answers']}, {a['open_at_end']} open at the end",
                             "closed", ok[f"{name}_slow_closed"]))
    from bench_common import print_table
    print_table("svd-server under connection abuse", rows)


def cmd_attack(args) -> int:
    import httpx

    from bench_api import TARGET_POLL_P99_MS
    from bench_common import BenchError, finish, noise_png, rss_kb, server_process
    if args.quick:
        args.phase_s, args.request_timeout = 3.0, 1.0
    if args.phase_s <= 0 or args.request_timeout <= 0:
        raise BenchError("--phase-s and --request-timeout must be positive")
    started = time.perf_counter()
    env = {"SVD_WORKERS": "0", "SVD_REQUEST_TIMEOUT_S": str(args.request_timeout)}
    with server_process("64x64", 2, 2, keys=2, env=env) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            r = client.post("/v2beta/image-to-video",
                            headers={"authorization": f"Bearer {server.keys[0]}"},
                            files={"image": ("in.png", noise_png(64, 64), "image/png")})
            if r.status_code != 200:
                raise BenchError(f"POST answered {r.status_code}: {r.text[:300]}")
        args.job_id = r.json()["id"]
        res = {"phase_s": args.phase_s, "request_timeout_s": args.request_timeout,
               "mb": args.mb, "slow": args.slow, "slow_bodies": args.slow_bodies,
               "interval": args.interval, "cpus": os.cpu_count(),
               "rss_rest_kb": rss_kb(server.proc.pid), "phases": {}}
        for name in PHASES:
            print(f"phase {name} ({args.phase_s:g} s)", file=sys.stderr)
            res["phases"][name] = run_phase(server, name, args)
            time.sleep(min(args.request_timeout, 2.0))     # the attack's leftovers close
            if server.proc.poll() is not None:
                raise BenchError(f"server exited with {server.proc.returncode}:\n{server.tail()}")
    res["wall_s"] = time.perf_counter() - started
    judge(res, TARGET_POLL_P99_MS)
    report(res, TARGET_POLL_P99_MS)
    return finish(res, args.json)


def add_parser(sub) -> None:
    p = sub.add_parser("attack", help="latency of another client while an attacker streams "
                                      "huge heads and holds slow connections")
    p.add_argument("--phase-s", type=float, default=15.0, help="seconds per phase (default 15)")
    p.add_argument("--request-timeout", type=float, default=5.0,
                   help="the server's SVD_REQUEST_TIMEOUT_S (default 5, so that slow "
                        "connections close within a phase)")
    p.add_argument("--mb", type=int, default=64, help="MiB per huge header or URL (default 64)")
    p.add_argument("--slow", type=int, default=300, help="half-sent heads (default 300)")
    p.add_argument("--slow-bodies", type=int, default=5,
                   help="half-sent bodies, with a key (default 5)")
    p.add_argument("--interval", type=float, default=0.02,
                   help="seconds between the other client's requests (default 0.02)")
    p.add_argument("--quick", action="store_true", help="3 s phases, 1 s timeout (for tests)")
    p.add_argument("--json", help="also write every number to this file")
    p.set_defaults(func=cmd_attack)


if __name__ == "__main__":
    sys.exit(attacker_main(sys.argv[1:]))
