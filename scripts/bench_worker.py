"""`scripts/bench.py worker`: does the generator wait for the rest of the worker?

    python scripts/bench.py worker [--model tiny|svd-xt-random] [--size 64x64] [--frames 4]
                                   [--steps 2] [--jobs 10] [--batches 1,2,4] [--quick]
                                   [--json OUT.json]

A real Worker on a SQLite store in a temp dir, with the real encoder and a real generator
(the tiny random-weight model on a CPU, SVD-XT's architecture with random weights on CUDA),
runs --jobs jobs queued before it starts, once per setting:

- overlap off and on (SVD_OVERLAP, batch 1): wall time from the first claim to the last
  finish, videos/hour, and "generator busy %", the time spent inside generate/generate_batch
  over the wall time (on CUDA also NVML's utilisation, where pynvml is importable);
- overlap on with each batch size of --batches (SVD_MAX_BATCH): videos/hour.

Prints a table and one JSON line. Target: overlap on keeps the generator busier than off.
--quick: 4 jobs, batches 1 and 2, for tests.
"""
from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from pathlib import Path

from bench_common import BenchError, noise_png, print_table, size_arg


class TimedGenerator:
    """The generator, with the seconds spent inside it added up."""

    def __init__(self, inner):
        self.inner = inner
        self.busy_s = 0.0
        self.calls = 0
        self._lock = threading.Lock()

    def __getattr__(self, name):            # description, default_frames, memory_stats, ...
        return getattr(self.inner, name)

    def generate(self, request, on_step=None, low_memory=0):
        return self._timed(self.inner.generate, request, on_step, low_memory)

    def generate_batch(self, requests, on_step=None, low_memory=0):
        return self._timed(self.inner.generate_batch, requests, on_step, low_memory)

    def _timed(self, call, *args):
        t0 = time.perf_counter()
        try:
            return call(*args)
        finally:
            with self._lock:
                self.busy_s += time.perf_counter() - t0
                self.calls += 1


def load(args):
    from inference.loader import load_generator, resolve_model
    return load_generator(resolve_model(args.model), num_frames=args.frames, steps=args.steps)


def run_case(gen, args, overlap: bool, max_batch: int, root: Path) -> dict:
    """Queue the jobs, run one worker until all are finished, and measure."""
    from app.jobs import migrate
    from app.jobs.model import Job, JobState, new_job_id
    from app.jobs.sql import SqlJobStore
    from app.jobs.tables import make_engine
    from app.jobs.worker import Worker, WorkerConfig
    from app.results.files import FileResultStore
    from bench_gpu_measure import GpuBusy

    root.mkdir(parents=True)
    engine = make_engine(f"sqlite:///{root / 'jobs.db'}")
    migrate.upgrade(engine)
    store = SqlJobStore(engine)
    w, h = args.size
    image, now = noise_png(w, h), time.time()
    ids = []
    for i in range(args.jobs):
        job = Job(id=new_job_id(), owner="bench", seed=i + 1, cfg_scale=1.8,
                  motion_bucket_id=127, width=w, height=h, created_at=now + i * 1e-3,
                  num_frames=args.frames, steps=args.steps, image=image)
        store.create(job)
        ids.append(job.id)
    timed = TimedGenerator(gen)
    config = WorkerConfig(overlap=overlap, max_batch=max_batch, idle_poll_s=0.05,
                          job_timeout_s=24 * 3600)
    fatal: list[BaseException] = []
    worker = Worker("bench", store=store, results=FileResultStore(root / "results"),
                    generator_factory=lambda: timed, config=config, on_fatal=fatal.append)
    busy = GpuBusy()
    with busy.measure():
        worker.start()
        try:
            while store.count(JobState.QUEUED) or store.count(JobState.RUNNING):
                if fatal:
                    raise BenchError(f"the worker stopped: {fatal[0]}")
                time.sleep(0.02)
        finally:
            worker.stop(timeout=60)
    jobs = [store.get(i) for i in ids]
    store.close()
    failed = [j for j in jobs if j.state != JobState.SUCCEEDED]
    if failed:
        raise BenchError(f"{len(failed)} job(s) did not succeed, e.g. {failed[0].state.value}: "
                         f"{failed[0].error}")
    wall = max(j.finished_at for j in jobs) - min(j.started_at for j in jobs)
    return {"overlap": overlap, "max_batch": max_batch, "jobs": len(jobs),
            "wall_s": round(wall, 3), "videos_per_hour": round(len(jobs) / wall * 3600, 1),
            "generator_busy_pct": round(100 * timed.busy_s / wall, 1),
            "generator_calls": timed.calls, "nvml_busy_pct": busy.percent}


def cmd_worker(args) -> int:
    import torch

    cuda = torch.cuda.is_available()
    args.model = args.model or ("svd-xt-random" if cuda else "tiny")
    big = cuda and args.model != "tiny"
    if args.quick:
        args.size, args.frames, args.steps, args.jobs = (args.size or (64, 64)), 4, 2, 4
        args.batches = "1,2"
    args.size = args.size or ((1024, 576) if big else (64, 64))
    args.frames = args.frames or (14 if big else 4)
    args.steps = args.steps or (10 if big else 2)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if any(not 1 <= b <= 8 for b in batches):
        raise BenchError("batch sizes are 1..8")
    logging.basicConfig(level=logging.WARNING)

    gen = load(args)
    from inference.base import GenerationRequest
    from PIL import Image
    w, h = args.size
    gen.generate(GenerationRequest(image=Image.new("RGB", (w, h)), seed=1))       # warm-up

    results = {"model": args.model, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
               "size": f"{w}x{h}", "frames": args.frames, "steps": args.steps,
               "jobs": args.jobs, "runs": {}}
    cases = [("overlap off", False, 1), ("overlap on", True, 1)]
    cases += [(f"batch {b}", True, b) for b in batches if b != 1]
    with tempfile.TemporaryDirectory(prefix="svd-bench-worker-") as tmp:
        for name, overlap, max_batch in cases:
            results["runs"][name] = run_case(gen, args, overlap, max_batch,
                                             Path(tmp) / name.replace(" ", "-"))
    runs = results["runs"]
    if 1 in batches:
        runs["batch 1"] = runs["overlap on"]

    rows = []
    off, on = runs["overlap off"], runs["overlap on"]
    for name, run in (("overlap off", off), ("overlap on", on)):
        rows.append((f"{name}: wall s (first claim → last finish)", f"{run['wall_s']:.2f}", "",
                     None))
        rows.append((f"{name}: videos/hour", f"{run['videos_per_hour']:.0f}", "", None))
        better = run["generator_busy_pct"] > off["generator_busy_pct"] if run is on else None
        rows.append((f"{name}: generator busy %", f"{run['generator_busy_pct']:.1f}",
                     "> off" if run is on else "", better))
        if run["nvml_busy_pct"] is not None:
            rows.append((f"{name}: GPU busy % (NVML)", f"{run['nvml_busy_pct']:.1f}", "", None))
    for b in batches:
        run = runs[f"batch {b}"]
        rows.append((f"batch {b} (overlap on): videos/hour", f"{run['videos_per_hour']:.0f}",
                     "", None))
    print_table(f"svd-server worker benchmark: {args.model}, {w}x{h}, {args.frames} frames, "
                f"{args.steps} steps, {args.jobs} jobs, {results['device']}", rows)
    print(json.dumps(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("worker", help="a real worker: overlap off/on, batch sizes")
    p.add_argument("--model", choices=("tiny", "svd-xt-random"),
                   help="default: svd-xt-random on CUDA, tiny on a CPU")
    p.add_argument("--size", type=size_arg, help="default 64x64 (CPU), 1024x576 (CUDA)")
    p.add_argument("--frames", type=int, help="default 4 (CPU), 14 (CUDA)")
    p.add_argument("--steps", type=int, help="default 2 (CPU), 10 (CUDA)")
    p.add_argument("--jobs", type=int, default=10, help="jobs per run (default 10)")
    p.add_argument("--batches", default="1,2,4", help="SVD_MAX_BATCH values to run")
    p.add_argument("--quick", action="store_true", help="4 jobs, batches 1 and 2 (for tests)")
    p.add_argument("--json", help="also write every number to this file")
    p.set_defaults(func=cmd_worker)
