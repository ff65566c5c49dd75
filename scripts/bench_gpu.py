"""`scripts/bench.py gpu`: the project's generator against plain diffusers, same card, same run.

    python scripts/bench.py gpu [--arch svd-xt-random|tiny] [--model DIR] [--size 1024x576]
                                [--frames 25] [--steps 25] [--runs full,low,batch,compiled,fast]
                                [--batches 2,4] [--compile on|max|off] [--fp8 auto|on|off]
                                [--low-memory-gib 8] [--fast-steps N] [--preset animatelcm-svd-xt]
                                [--quick] [--json OUT.json]

Random-weight SVD-XT (`--arch svd-xt-random`, the default on CUDA) has the compute and memory
of the real checkpoint; `--model DIR` uses real weights. On a CPU it runs the tiny model at a
small size and still prints the table (CI runs it that way). For each run: seconds per video,
ratio to plain diffusers, peak GPU memory (the run's own, warm-ups excluded), GPU busy share
(NVML), the phases (image encode, denoise, decode, MP4 encode), videos/hour, full and cached
UNet steps where a step cache is on, and PSNR and max abs diff against plain diffusers'
frames (seed 1) decoded in the same chunks: 8 frames at a time, and for `low` its own chunk
(a second plain run, made only when `low` is asked for). The runs: `full` (eager, full-speed
profile), `low` (under a --low-memory-gib limit on CUDA), `batch` (2 and 4 videos per UNet
call), `compiled` (SVD_COMPILE; `max`: max-autotune kernels, no CUDA graphs; compile time
apart) and `fast` (SVD_MODE=fast: fewer steps, step cache, FP8 per --fp8, compiled).
Compiled runs are skipped on a CPU unless --compile on is given (compiling takes minutes).

`--preset NAME` adds one row, whatever --runs says: a few-step preset of inference/presets.py
(`animatelcm-svd-xt`) sampled as `SVD_MODEL=NAME` samples it (inference/loader.py: its
sampler, guidance slope and decode chunk) at the preset's own steps (4, also with --steps and
--quick), eager, over the same pipeline as every other row: its weights, not the preset's (no
AnimateLCM file is needed: the few-step path's speed does not depend on the UNet's weights),
and its name says so. After one untimed video (its sampler and decode chunk are new to the
pipeline), its seconds per video and ratio to the plain diffusers baseline of the same run,
against a target of x0.18 or less (PRESET_TARGET_RATIO), judged PASS/MISS only where it
means something: SVD-XT's architecture on CUDA against 25 plain steps; elsewhere (the tiny
model, a CPU, --quick's 2 plain steps) the ratio is shown and not judged. No PSNR: another
sampler and another step count make another video. `--runs ""` leaves only plain diffusers
(and the preset's row). A name that is not a few-step preset is an argparse error.

A run that fails (out of memory, a missing package, any error building or running its
configuration) is a row with its error; the later runs still run, and the table and JSON are
written. The exit status is 0 when the plain diffusers baseline ran (whatever else failed),
1 when it did not (nothing then has a reference).
"""
from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_common import print_table, size_arg
from bench_gpu_measure import Meter, compare
from bench_gpu_preset import (FEW_STEP_PRESETS, PRESET_TARGET_RATIO, PRESET_TARGET_STEPS,
                              judge_preset, preset_arg, preset_name)
from inference.presets import PRESETS

BASELINE_CHUNK = 8
# --quick. The fast run takes 3 steps, the fewest with a cached one (the first and the last
# step run the whole UNet); the others take 2: the tiny model's random weights blow rounding
# differences up with every step (batch of 2 against alone: 65 dB at 2 steps, 43 at 3, 26 at 4).
QUICK_SIZE, QUICK_FRAMES, QUICK_STEPS, QUICK_FAST_STEPS = (64, 64), 4, 2, 3



def plain_name(chunk: int) -> str:
    return f"plain diffusers (decode chunk {chunk})"


def reference_key(chunk: int) -> str:
    """The suffix of psnr_vs_* / max_abs_diff_vs_*: "plain" is the baseline's frames."""
    return "plain" if chunk == BASELINE_CHUNK else f"plain_decode_chunk_{chunk}"


BASELINE = plain_name(BASELINE_CHUNK)


def build(args):
    """(pipeline, the device its weights are on, arch); the tiny model moves to CUDA too."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.arch == "tiny" or device == "cpu":
        from inference.tiny import build_tiny_pipeline
        pipe, arch = build_tiny_pipeline().to(device), "tiny"
    elif args.model:
        from diffusers import StableVideoDiffusionPipeline
        pipe = StableVideoDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float16)
        pipe, arch = pipe.to(device), args.model
    else:
        from inference.random_arch import build_svd_xt_random
        pipe, arch = build_svd_xt_random(device), "svd-xt-random"
    return pipe, str(pipe.device), arch


def failed_row(exc: BaseException) -> dict:
    import torch
    if isinstance(exc, torch.OutOfMemoryError):
        return {"s": None, "error": f"out of memory: {str(exc)[:200]}"}
    return {"s": None, "error": f"{type(exc).__name__}: {exc}"[:500]}


class Bench:
    """One device, one pipeline, one input image: timed runs of plain diffusers and of the
    project's generator in its configurations, each with its phases and peak memory. Rows go
    to `runs`; plain diffusers' frames per decode chunk to `reference`."""

    def __init__(self, args, pipe, device: str, arch: str, meter: Meter | None = None):
        import torch
        from PIL import Image

        self.args, self.pipe, self.device, self.arch, self.torch = args, pipe, device, arch, torch
        self.cuda = device.startswith("cuda")
        self.meter = meter or Meter(torch, device)
        w, h = args.size
        self.image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3),
                                                                       dtype=np.uint8))
        self.runs: dict[str, dict] = {}
        self.reference: dict[int, np.ndarray] = {}
        self.timings = self.meter.time_phases(pipe, ("_encode_image", "_encode_vae_image",
                                                     "decode_latents"))

    def attempt(self, name: str, fn, *args, **kwargs):
        """fn's result (a configuration writes its own row); if it fails, None, and its row
        is the error under `name`, and the next configuration runs on."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:                 # noqa: BLE001 - any failure is a result
            self.runs[name] = failed_row(exc)
            gc.collect()
            if self.cuda:
                self.torch.cuda.empty_cache()
            return None

    def plain(self, chunk: int = BASELINE_CHUNK) -> np.ndarray:
        w, h = self.args.size
        out = self.pipe(self.image, height=h, width=w, num_frames=self.args.frames,
                        num_inference_steps=self.args.steps, decode_chunk_size=chunk,
                        min_guidance_scale=1.0, max_guidance_scale=3.0,
                        generator=self.torch.Generator("cpu").manual_seed(1), output_type="np")
        return (np.clip(out.frames[0], 0, 1) * 255 + 0.5).astype(np.uint8)

    def plain_row(self, chunk: int = BASELINE_CHUNK, warm_up: bool = False) -> None:
        if warm_up:
            self.plain(chunk)
        frames, m = self.meter.run(lambda: self.plain(chunk))
        self.runs[plain_name(chunk)], self.reference[chunk] = {**m, "s": round(m["s"], 2)}, frames

    def requests(self, n: int, steps: int | None = None):
        from inference.base import GenerationRequest
        return [GenerationRequest(image=self.image, seed=1 + i, cfg_scale=3.0, steps=steps)
                for i in range(n)]

    def run_generator(self, gen, batch: int = 1, steps: int | None = None, memory_gib=None):
        """({s, phases, peak, busy, ...} for one batch of `batch` videos, the frames of the
        first video)."""
        from inference.encode import encode_mp4
        videos, m = self.meter.run(lambda: gen.generate_batch(self.requests(batch, steps)),
                                   memory_gib)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            encode_mp4(videos[0], Path(tmp) / "v.mp4", fps=7)
            mp4_s = time.perf_counter() - t
        image_s = self.timings.get("_encode_image", 0) + self.timings.get("_encode_vae_image", 0)
        decode_s = self.timings.get("decode_latents", 0)
        gen_s = m["s"]
        per_video = gen_s / batch + mp4_s
        row = {"s": round(per_video, 2), "generate_s": round(gen_s, 2), "batch": batch,
               "videos_per_hour": round(3600 / per_video), "peak_gib": m["peak_gib"],
               "busy": m["busy"], "image_encode_s": round(image_s, 3),
               "denoise_s": round(gen_s - image_s - decode_s, 3), "decode_s": round(decode_s, 3),
               "mp4_s": round(mp4_s, 3)}
        if getattr(gen, "step_cache", None) is not None:    # counters of this batch alone
            row["full_steps"] = gen.step_cache.full_steps
            row["cached_steps"] = gen.step_cache.cached_steps
        return row, videos[0]

    def generator_row(self, name: str, gen, chunk: int = BASELINE_CHUNK, **kwargs) -> dict:
        """A row for `gen`, compared with plain diffusers decoding `chunk` frames at a time."""
        row, frames = self.run_generator(gen, **kwargs)
        compare(row, frames, self.reference.get(chunk), reference_key(chunk))
        self.runs[name] = row
        return row

    def generator(self, steps: int | None = None, speed=None, warm_up: bool = False,
                  preset=None):
        """An SvdGenerator on the pipeline, warmed up if asked; and the seconds that took.
        `preset` (inference.presets.Preset): sampling as that preset does (inference.loader.sampling_options)."""
        from inference.loader import sampling_options
        from inference.svd import SvdGenerator
        t = time.perf_counter()
        gen = SvdGenerator(self.pipe, self.device, self.arch, default_frames=self.args.frames,
                           default_steps=steps or self.args.steps, speed=speed,
                           **(sampling_options(preset.scheduler, preset) if preset else {}))
        if warm_up:
            gen.warm_up([self.args.size])
        return gen, round(time.perf_counter() - t, 1)

    def low(self, gen, name: str, limit: float | None) -> None:
        """The low profile against plain diffusers decoding as many frames at a time."""
        from inference.svd import DECODE_CHUNKS
        chunk = DECODE_CHUNKS["low"]
        if chunk not in self.reference:
            self.attempt(plain_name(chunk), self.plain_row, chunk)
        gen.set_profile("low")
        try:
            self.generator_row(name, gen, chunk, memory_gib=limit)
        finally:                  # a failure here is a row of its own, not the low row's
            self.attempt("svd-server back to the full profile", gen.set_profile, "full")

    def preset(self, preset, name: str) -> dict:
        """`preset`'s row under `name`: its sampling at its own steps over this pipeline, timed
        after one untimed video; its ratio to the baseline and the target; no PSNR."""
        gen, _ = self.generator(steps=preset.steps, preset=preset)
        t = time.perf_counter()
        gen.generate_batch(self.requests(1, preset.steps))
        warm_up_s = round(time.perf_counter() - t, 2)
        row, _ = self.run_generator(gen, steps=preset.steps)
        base = self.runs.get(BASELINE, {}).get("s")
        ratio = round(row["s"] / base, 3) if base else None
        met, why = judge_preset(ratio, self.device, self.arch, self.args.steps)
        row.update(preset=preset.name, steps=preset.steps, sampler=preset.scheduler,
                   guidance_slope=gen.guidance_slope, decode_chunk=gen.decode_chunk_size,
                   warm_up_s=warm_up_s, ratio_vs_plain=ratio, target_ratio=PRESET_TARGET_RATIO,
                   target_met=met,
                   psnr_note="not compared: another sampler and step count than plain "
                             "diffusers make another video")
        if why:
            row["target_note"] = why
        self.runs[name] = row
        return row

    def compiled(self, compile: str) -> None:
        from inference.speed import SpeedOptions
        gen, setup_s = self.generator(speed=SpeedOptions(compile=compile), warm_up=True)
        self.generator_row(f"svd-server compiled ({compile})", gen)["compile_s"] = setup_s

    def fast(self, compile: str, fp8: str) -> None:
        from inference.speed import FAST_STEPS, resolve
        speed = resolve("fast", compile=compile, fp8=fp8, device=self.device)
        steps = self.args.fast_steps or min(FAST_STEPS, self.args.steps)
        gen, setup_s = self.generator(steps=steps, speed=speed, warm_up=True)
        name = (f"svd-server fast ({steps} steps, step cache {speed.step_cache}"
                f"{', FP8' if speed.fp8 else ''}{', compiled' if speed.compiled else ''})")
        self.generator_row(name, gen, steps=steps)["compile_s"] = setup_s


def cmd_gpu(args) -> int:
    import torch

    if args.quick:
        args.size, args.frames, args.steps = QUICK_SIZE, QUICK_FRAMES, QUICK_STEPS
        args.fast_steps = QUICK_FAST_STEPS
    pipe, device, arch = build(args)
    cuda = device.startswith("cuda")
    compile = args.compile or ("on" if cuda else "off")
    wanted = args.runs.split(",")
    bench = Bench(args, pipe, device, arch)
    w, h = args.size
    results = {"arch": arch, "device": torch.cuda.get_device_name(device) if cuda else "cpu",
               "torch_device": device, "torch": torch.__version__, "size": f"{w}x{h}",
               "frames": args.frames, "steps": args.steps, "compile": compile, "fp8": args.fp8,
               "preset": args.preset, "runs": bench.runs}

    bench.attempt(BASELINE, bench.plain_row, BASELINE_CHUNK, warm_up=True)
    # Eager runs first: compiling and FP8 change the UNet in place.
    if {"full", "low", "batch"} & set(wanted):
        gen, _ = bench.attempt("svd-server eager generator", bench.generator) or (None, 0)
        if gen is None:
            wanted = [r for r in wanted if r not in ("full", "low", "batch")]
    if "full" in wanted:
        bench.attempt("svd-server full", bench.generator_row, "svd-server full", gen)
    if "low" in wanted:
        limit = args.low_memory_gib if cuda else None
        name = "svd-server low" + (f" (limit {limit:g} GiB)" if limit else "")
        bench.attempt(name, bench.low, gen, name, limit)
    if "batch" in wanted:
        for n in [int(b) for b in args.batches.split(",") if int(b) > 1]:
            name = f"svd-server batch of {n}"
            bench.attempt(name, bench.generator_row, name, gen, batch=n)
    if args.preset:
        preset = PRESETS[args.preset]
        name = preset_name(preset, arch)
        bench.attempt(name, bench.preset, preset, name)
    if "compiled" in wanted and compile != "off":
        bench.attempt(f"svd-server compiled ({compile})", bench.compiled, compile)
    if "fast" in wanted:
        bench.attempt(f"svd-server fast (FP8 {args.fp8})", bench.fast, compile, args.fp8)

    where = f"{results['device']} ({device})" if cuda else device
    print_table(f"svd-server GPU benchmark: {arch} on {where}, {w}x{h}, "
                f"{args.frames} frames, {args.steps} steps", table_rows(bench.runs))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    return 0 if bench.runs.get(BASELINE, {}).get("s") is not None else 1


def table_rows(runs: dict) -> list[tuple]:
    rows = []
    base = runs.get(BASELINE, {}).get("s")
    for name, r in runs.items():
        if r.get("s") is None:
            rows.append((name, "FAILED", r.get("error", "")[:120], None))
            continue
        ratio = f" x{r['s'] / base:.2f}" if base else ""
        head = f"{r['s']:.2f} s{ratio}, peak {r['peak_gib']} GiB, busy {r['busy']}%"
        details = []
        if "target_ratio" in r:
            details.append(f"target x{r['target_ratio']:.2f} or less"
                           + (f" ({r['target_note']})" if r.get("target_note") else ""))
        if "mp4_s" in r:
            details.append(f"img {r['image_encode_s']:.2f} / denoise {r['denoise_s']:.2f} / decode "
                           f"{r['decode_s']:.2f} / mp4 {r['mp4_s']:.2f}")
        if "videos_per_hour" in r:
            details.append(f"{r['videos_per_hour']} videos/h")
        if "cached_steps" in r:
            details.append(f"UNet steps {r['full_steps']} full + {r['cached_steps']} cached")
        for key in [k.removeprefix("psnr_vs_") for k in r if k.startswith("psnr_vs_")]:
            details.append(f"PSNR {r['psnr_vs_' + key]} dB, max diff "
                           f"{r['max_abs_diff_vs_' + key]} vs {key.replace('_', ' ')}")
        if "psnr_note" in r:
            details.append("no PSNR: another sampler and step count")
        if "compile_s" in r:
            details.append(f"compile+warm-up {r['compile_s']} s")
        rows.append((name, head, "; ".join(details), r.get("target_met")))
    return rows


def add_parser(sub) -> None:
    gpu = sub.add_parser("gpu", help="the generator against plain diffusers on one device")
    gpu.add_argument("--arch", default="svd-xt-random", choices=("svd-xt-random", "tiny"))
    gpu.add_argument("--model", help="a local diffusers directory with real weights")
    gpu.add_argument("--size", default=(1024, 576), type=size_arg)
    gpu.add_argument("--frames", type=int, default=25)
    gpu.add_argument("--steps", type=int, default=25,
                     help="steps of plain diffusers and of the generator's runs (not --preset's)")
    gpu.add_argument("--runs", default="full,low,batch,compiled,fast",
                     help="which of full, low, batch, compiled, fast to run (plain diffusers "
                          "always; \"\": it alone, and --preset's row)")
    gpu.add_argument("--batches", default="2,4", help="batch sizes for the batch runs")
    gpu.add_argument("--compile", choices=("off", "on", "max"),
                     help="torch.compile of the UNet's blocks in the compiled and fast runs: on "
                          "(default mode), max (max-autotune kernel selection, no CUDA graphs), "
                          "off; default: on with CUDA, off on a CPU")
    gpu.add_argument("--fp8", choices=("auto", "on", "off"), default="auto",
                     help="FP8 matmuls in the fast run (SVD_FP8): auto where the card has them; "
                          "on fails that run where it has not")
    gpu.add_argument("--low-memory-gib", type=float, default=8.0,
                     help="GPU memory the low profile may use (emulates a small card)")
    gpu.add_argument("--fast-steps", type=int, help="steps of the fast run (default: "
                     "min(--steps, inference.speed.FAST_STEPS))")
    gpu.add_argument("--preset", type=preset_arg, metavar="NAME",
                     help="also a row for this few-step preset (" + ", ".join(FEW_STEP_PRESETS)
                          + f") at its own steps, with its ratio to plain diffusers (target "
                          f"x{PRESET_TARGET_RATIO} or less on a GPU at {PRESET_TARGET_STEPS} "
                          "plain steps); over the benchmark's weights, not the preset's")
    gpu.add_argument("--quick", action="store_true", help="64x64, 4 frames, 2 steps, 3 in the "
                     "fast run so that one of them is cached (CPU tests)")
    gpu.add_argument("--json", help="also write every number to this file")
    gpu.set_defaults(func=cmd_gpu)
