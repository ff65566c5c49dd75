#!/usr/bin/env python
"""Benchmarks for svd-server. Each subcommand lives in its own module beside this file.

    python scripts/bench.py api [--jobs 5] [--size 64x64] [--target-s 4] [--poll-interval 0.1]
                                [--frames 25] [--quick] [--json OUT.json]

`api`: HTTP and queue overhead against calling the generator directly, and poll latency
(tiny model on the CPU); see scripts/bench_api.py.

    python scripts/bench.py load [--clients 50] [--duration 60] [--keys 5] [--rate-limit 150/10s]
                                 [--max-queued 100] [--max-queued-per-key 20] [--quick]
                                 [--json OUT.json]

`load`: many concurrent clients against one server: status codes, Retry-After on refusals,
poll and /healthz latency, server memory; see scripts/bench_load.py.

    python scripts/bench.py queue [--workers 16] [--processes 4] [--jobs 2000] [--sleep 0.0]
                                  [--latency-jobs 300] [--database-url URL] [--quick]
                                  [--json OUT.json]

`queue`: the PostgreSQL job queue with a fake generator: claim/finish throughput across worker
processes, duplicates and lost jobs, submit-to-claim latency with and without LISTEN/NOTIFY;
see scripts/bench_queue.py.

    python scripts/bench.py worker [--model tiny|svd-xt-random] [--size 64x64] [--frames 4]
                                   [--steps 2] [--jobs 10] [--batches 1,2,4] [--quick]
                                   [--json OUT.json]

`worker`: a real worker with overlap off and on (generator busy share, videos/hour) and with
batches of compatible jobs; see scripts/bench_worker.py.

    python scripts/bench.py startup [--model tiny|svd-xt-random] [--size 1024x576] [--frames N]
                                    [--steps N] [--compile on|max] [--quick] [--json OUT.json]

`startup`: time from launch to ready and the first video's time, eager and compiled (empty
and warm compile cache); see scripts/bench_startup.py.

    python scripts/bench.py attack [--phase-s 15] [--request-timeout 5] [--mb 64] [--slow 300]
                                   [--slow-bodies 5] [--interval 0.02] [--quick]
                                   [--json OUT.json]

`attack`: another client's /healthz and poll latency, and the server's RSS, at rest and while
an attacker streams huge headers and URLs and holds hundreds of half-sent heads and bodies;
see scripts/bench_attack.py.

    python scripts/bench.py sse [--streams 500] [--keys 5] [--jobs-per-key 1] [--limit N]
                                [--over 5] [--duration 15] [--quick] [--json OUT.json]

`sse`: many open event streams on queued jobs: another client's poll latency with none and
with them open, server CPU, and 429s for streams beyond SVD_MAX_STREAMS_PER_KEY; see
scripts/bench_sse.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]   # run as a file: app, inference, bench_* importable

import bench_api  # noqa: E402
import bench_attack  # noqa: E402
from bench_common import BenchError  # noqa: E402
import bench_load  # noqa: E402
import bench_gpu  # noqa: E402
import bench_queue  # noqa: E402
import bench_sse  # noqa: E402
import bench_startup  # noqa: E402
import bench_worker  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    bench_api.add_parser(sub)
    bench_attack.add_parser(sub)
    bench_gpu.add_parser(sub)
    bench_load.add_parser(sub)
    bench_queue.add_parser(sub)
    bench_sse.add_parser(sub)
    bench_startup.add_parser(sub)
    bench_worker.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
