"""`scripts/bench.py startup`: how soon a server is ready, and what its first video costs.

    python scripts/bench.py startup [--model tiny|svd-xt-random] [--size 1024x576] [--frames N]
                                    [--steps N] [--compile on] [--quick] [--json OUT.json]

Three starts of `svd-server serve`, each timed from launch to /readyz 200, then one video
through HTTP (submit to MP4):
1. eager (SVD_COMPILE=off), for reference;
2. compiled, on an empty data dir: the compile happens during the warm-up, before ready;
3. compiled again on the same data dir: the compiled artefacts come from its compile-cache.
The target is start 3 ready within 30 s with its first video as fast as any later one.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench_api import http_job
from bench_common import noise_png, print_table, server_process, size_arg

READY_TARGET_S = 30.0


def one_start(args, data: Path, compile: str) -> dict:
    import httpx

    from app.jobs.sql import SqlJobStore
    w, h = args.size
    size = f"{w}x{h}"
    env = {"SVD_MODEL": args.model, "SVD_COMPILE": compile, "SVD_LOG_LEVEL": "info"}
    t0 = time.monotonic()
    with server_process(size, args.frames, args.steps, env=env, data_dir=data,
                        ready_timeout_s=args.ready_timeout) as server:
        ready_s = time.monotonic() - t0
        store = SqlJobStore.from_url(f"sqlite:///{data / 'svd.db'}")
        try:
            with httpx.Client(base_url=server.url, timeout=60,
                              headers={"authorization": f"Bearer {server.keys[0]}"}) as client:
                image = noise_png(w, h)
                first = http_job(client, store, image, 1, 0.05, args.job_timeout, [])
                second = http_job(client, store, image, 2, 0.05, args.job_timeout, [])
        finally:
            store.engine.dispose()
    cache = data / "compile-cache"
    return {"compile": compile, "ready_s": round(ready_s, 2),
            "first_video_s": round(first["worker_s"], 2),
            "second_video_s": round(second["worker_s"], 2),
            "cache_files": sum(1 for p in cache.rglob("*") if p.is_file()) if cache.exists() else 0}


def cmd_startup(args) -> int:
    if args.quick:
        args.size, args.frames, args.steps = (128, 64), 4, 2
    runs = {}
    with tempfile.TemporaryDirectory(prefix="svd-startup-") as tmp:
        runs["eager"] = one_start(args, Path(tmp) / "eager", "off")
        data = Path(tmp) / "compiled"
        runs["compiled, empty cache"] = one_start(args, data, args.compile)
        runs["compiled, warm cache"] = one_start(args, data, args.compile)
    rows = []
    for name, r in runs.items():
        rows.append((name, f"ready {r['ready_s']:.1f} s",
                     f"first video {r['first_video_s']:.2f} s, second {r['second_video_s']:.2f} s, "
                     f"{r['cache_files']} cached files", None))
    warm = runs["compiled, warm cache"]
    rows.append(("target: warm start ready", f"<= {READY_TARGET_S:.0f} s",
                 "PASS" if warm["ready_s"] <= READY_TARGET_S else "MISS", None))
    w, h = args.size
    print_table(f"svd-server start-up: {args.model}, {w}x{h}, {args.frames} frames, "
                f"{args.steps} steps, SVD_COMPILE={args.compile}", rows)
    result = {"model": args.model, "size": f"{w}x{h}", "frames": args.frames,
              "steps": args.steps, "runs": runs}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("startup", help="time to ready and first-video time, eager and compiled")
    p.add_argument("--model", default="tiny", choices=("tiny", "svd-xt-random"))
    p.add_argument("--size", default=(1024, 576), type=size_arg)
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--compile", default="on", choices=("on", "max"))
    p.add_argument("--ready-timeout", type=float, default=900.0,
                   help="seconds a start may take (a cold compile on a CPU is minutes)")
    p.add_argument("--job-timeout", type=float, default=600.0)
    p.add_argument("--quick", action="store_true", help="128x64, 4 frames, 2 steps")
    p.add_argument("--json", help="also write every number to this file")
    p.set_defaults(func=cmd_startup)
