"""`scripts/bench.py gpu`: the project's generator against plain diffusers, same card, same run.

    python scripts/bench.py gpu [--arch svd-xt-random|tiny] [--model DIR] [--size 1024x576]
                                [--frames 25] [--steps 25] [--runs full,low,batch,compiled,fast]
                                [--batches 2,4] [--compile on|max|off] [--low-memory-gib 8]
                                [--quick] [--json OUT.json]

Random-weight SVD-XT (`--arch svd-xt-random`, the default on CUDA) has the compute and memory
of the real checkpoint; `--model DIR` uses real weights. On a CPU it runs the tiny model at a
small size and still prints the table (CI runs it that way). For each run: seconds per video,
ratio to plain diffusers, peak GPU memory, GPU busy share (NVML, when available), the phases
(image encode, denoise, decode, MP4 encode), videos/hour, and PSNR and max abs diff against
plain diffusers' frames (seed 1). The runs: `full` (eager, full-speed profile), `low` (under a
--low-memory-gib limit on CUDA), `batch` (2 and 4 videos per UNet call), `compiled`
(SVD_COMPILE, compile time reported apart) and `fast` (SVD_MODE=fast: fewer steps, step
cache, FP8 where the card has it, compiled). Compiled runs are skipped on a CPU unless
--compile on is given (compiling there takes minutes).
"""
from __future__ import annotations

import json
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bench_common import print_table, size_arg


class GpuBusy:
    """Samples NVML's utilisation while running; None where NVML is not available."""

    def __init__(self):
        self.samples: list[int] = []
        self._stop = threading.Event()
        try:
            import pynvml
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
        except Exception:                     # noqa: BLE001 - no NVML, no GPU: no number
            self._nvml = None

    @contextmanager
    def measure(self):
        self.samples, self._stop = [], threading.Event()
        thread = None
        if self._nvml:
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
        try:
            yield
        finally:
            self._stop.set()
            if thread:
                thread.join()

    def _run(self):
        while not self._stop.wait(0.05):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    @property
    def percent(self) -> float | None:
        return round(float(np.mean(self.samples)), 1) if self.samples else None


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else round(10 * np.log10(255.0 ** 2 / mse), 2)


def build(args):
    import torch

    cuda = torch.cuda.is_available()
    if args.arch == "tiny" or not cuda:
        from inference.tiny import build_tiny_pipeline
        return build_tiny_pipeline(), "cpu" if not cuda else "cuda", "tiny"
    if args.model:
        from diffusers import StableVideoDiffusionPipeline
        pipe = StableVideoDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float16)
        return pipe.to("cuda"), "cuda", args.model
    from inference.random_arch import build_svd_xt_random
    return build_svd_xt_random("cuda"), "cuda", "svd-xt-random"


class Bench:
    """One device, one pipeline, one input image: timed runs of plain diffusers and of the
    project's generator in its configurations, each with its phases and peak memory."""

    def __init__(self, args, pipe, device: str):
        import torch
        from PIL import Image

        self.args, self.pipe, self.device, self.torch = args, pipe, device, torch
        self.cuda = device == "cuda"
        w, h = args.size
        self.image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3),
                                                                       dtype=np.uint8))
        self.busy = GpuBusy()
        self.timings: dict[str, float] = {}
        for name in ("_encode_image", "_encode_vae_image", "decode_latents"):   # phase timers
            original = getattr(pipe, name)

            def timed(*a, _original=original, _name=name, **kw):
                self.sync()
                t = time.perf_counter()
                out = _original(*a, **kw)
                self.sync()
                self.timings[_name] = self.timings.get(_name, 0.0) + time.perf_counter() - t
                return out
            setattr(pipe, name, timed)

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def peak_reset(self):
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak(self) -> float | None:
        return round(self.torch.cuda.max_memory_allocated() / 2**30, 2) if self.cuda else None

    def plain(self) -> np.ndarray:
        w, h = self.args.size
        out = self.pipe(self.image, height=h, width=w, num_frames=self.args.frames,
                        num_inference_steps=self.args.steps, decode_chunk_size=8,
                        min_guidance_scale=1.0, max_guidance_scale=3.0,
                        generator=self.torch.Generator("cpu").manual_seed(1), output_type="np")
        return (np.clip(out.frames[0], 0, 1) * 255 + 0.5).astype(np.uint8)

    def requests(self, n: int, steps: int | None = None):
        from inference.base import GenerationRequest
        return [GenerationRequest(image=self.image, seed=1 + i, cfg_scale=3.0, steps=steps)
                for i in range(n)]

    def timed(self, fn):
        self.timings.clear()
        self.peak_reset()
        self.sync()
        t = time.perf_counter()
        with self.busy.measure():
            out = fn()
            self.sync()
        return out, time.perf_counter() - t

    def run_generator(self, gen, batch: int = 1, steps: int | None = None, memory_gib=None):
        """{s, phases, peak, busy, ...} for one batch of `batch` videos, plus the frames of
        the first; an out-of-memory is a result too (the configuration does not fit)."""
        from inference.encode import encode_mp4
        torch = self.torch
        if memory_gib:                                  # emulate a small card
            total = torch.cuda.get_device_properties(0).total_memory / 2**30
            torch.cuda.set_per_process_memory_fraction(memory_gib / total)
        try:
            videos, gen_s = self.timed(lambda: gen.generate_batch(self.requests(batch, steps)))
        except torch.OutOfMemoryError as exc:
            return {"s": None, "error": f"out of memory: {str(exc)[:160]}"}, None
        finally:
            if memory_gib:
                torch.cuda.set_per_process_memory_fraction(1.0)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            encode_mp4(videos[0], Path(tmp) / "v.mp4", fps=7)
            mp4_s = time.perf_counter() - t
        image_s = self.timings.get("_encode_image", 0) + self.timings.get("_encode_vae_image", 0)
        decode_s = self.timings.get("decode_latents", 0)
        per_video = gen_s / batch + mp4_s
        return {"s": round(per_video, 2), "generate_s": round(gen_s, 2), "batch": batch,
                "videos_per_hour": round(3600 / per_video), "peak_gib": self.peak(),
                "busy": self.busy.percent, "image_encode_s": round(image_s, 3),
                "denoise_s": round(gen_s - image_s - decode_s, 3), "decode_s": round(decode_s, 3),
                "mp4_s": round(mp4_s, 3)}, videos[0]


def compare(result: dict, frames, reference, key: str) -> None:
    if frames is not None:
        result[f"psnr_vs_{key}"] = psnr(frames, reference)
        result[f"max_abs_diff_vs_{key}"] = int(np.abs(frames.astype(int) - reference.astype(int)).max())


def cmd_gpu(args) -> int:
    import torch

    from inference.speed import FAST_STEPS, SpeedOptions, resolve
    from inference.svd import SvdGenerator

    if args.quick:
        args.size, args.frames, args.steps = (64, 64), 4, 2
    pipe, device, arch = build(args)
    cuda = device == "cuda"
    compile = args.compile or ("on" if cuda else "off")
    wanted = args.runs.split(",")
    bench = Bench(args, pipe, device)
    w, h = args.size
    results = {"arch": arch, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
               "torch": torch.__version__, "size": f"{w}x{h}", "frames": args.frames,
               "steps": args.steps, "compile": compile, "runs": {}}
    runs = results["runs"]

    bench.plain()                                         # warm-up
    reference, base_s = bench.timed(bench.plain)
    runs[BASELINE] = {"s": round(base_s, 2), "peak_gib": bench.peak(), "busy": bench.busy.percent}

    # Eager runs first: compiling and FP8 change the UNet in place.
    gen = SvdGenerator(pipe, device, arch, default_frames=args.frames, default_steps=args.steps)
    if "full" in wanted:
        runs["svd-server full"], frames = bench.run_generator(gen)
        compare(runs["svd-server full"], frames, reference, "plain")
    if "low" in wanted:
        gen.set_profile("low")
        limit = args.low_memory_gib if cuda else None
        name = "svd-server low" + (f" (limit {limit:g} GiB)" if limit else "")
        runs[name], frames = bench.run_generator(gen, memory_gib=limit)
        compare(runs[name], frames, reference, "plain")
        gen.set_profile("full")
    if "batch" in wanted:
        for n in [int(b) for b in args.batches.split(",") if int(b) > 1]:
            runs[f"svd-server batch of {n}"], frames = bench.run_generator(gen, batch=n)
            compare(runs[f"svd-server batch of {n}"], frames, reference, "plain")
    quality = None
    if "compiled" in wanted and compile != "off":
        t = time.perf_counter()
        gen = SvdGenerator(pipe, device, arch, default_frames=args.frames, default_steps=args.steps,
                           speed=SpeedOptions(compile=compile))
        gen.warm_up([args.size])
        compile_s = time.perf_counter() - t
        name = f"svd-server compiled ({compile})"
        runs[name], quality = bench.run_generator(gen)
        runs[name]["compile_s"] = round(compile_s, 1)
        compare(runs[name], quality, reference, "plain")
    if "fast" in wanted:
        speed = resolve("fast", compile=compile, device=device)
        steps = min(FAST_STEPS, args.steps) if not args.quick else args.steps
        t = time.perf_counter()
        gen = SvdGenerator(pipe, device, arch, default_frames=args.frames, default_steps=steps,
                           speed=speed)
        gen.warm_up([args.size])
        name = (f"svd-server fast ({steps} steps, step cache {speed.step_cache}"
                f"{', FP8' if speed.fp8 else ''}{', compiled' if speed.compiled else ''})")
        runs[name], frames = bench.run_generator(gen, steps=steps)
        runs[name]["compile_s"] = round(time.perf_counter() - t - (runs[name]["generate_s"] or 0), 1)
        compare(runs[name], frames, reference, "plain")

    print_table(f"svd-server GPU benchmark: {arch} on {results['device']}, {w}x{h}, "
                f"{args.frames} frames, {args.steps} steps", table_rows(runs))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    return 0


BASELINE = "plain diffusers (decode chunk 8)"


def table_rows(runs: dict) -> list[tuple]:
    rows = []
    base = runs[BASELINE]["s"]
    for name, r in runs.items():
        if r["s"] is None:
            rows.append((name, r["error"][:60], "", None))
            continue
        head = (f"{r['s']:.2f} s x{r['s'] / base:.2f}, peak {r['peak_gib']} GiB, busy {r['busy']}%")
        details = []
        if "mp4_s" in r:
            details.append(f"img {r['image_encode_s']:.2f} / denoise {r['denoise_s']:.2f} / decode "
                           f"{r['decode_s']:.2f} / mp4 {r['mp4_s']:.2f}")
        if r.get("batch", 1) > 1 or "videos_per_hour" in r:
            details.append(f"{r['videos_per_hour']} videos/h")
        if "psnr_vs_plain" in r:
            details.append(f"PSNR {r['psnr_vs_plain']} dB, max diff {r['max_abs_diff_vs_plain']}")
        if "compile_s" in r:
            details.append(f"compile+warm-up {r['compile_s']} s")
        rows.append((name, head, "; ".join(details), None))
    return rows


def add_parser(sub) -> None:
    gpu = sub.add_parser("gpu", help="the generator against plain diffusers on one device")
    gpu.add_argument("--arch", default="svd-xt-random", choices=("svd-xt-random", "tiny"))
    gpu.add_argument("--model", help="a local diffusers directory with real weights")
    gpu.add_argument("--size", default=(1024, 576), type=size_arg)
    gpu.add_argument("--frames", type=int, default=25)
    gpu.add_argument("--steps", type=int, default=25)
    gpu.add_argument("--runs", default="full,low,batch,compiled,fast",
                     help="which of full, low, batch, compiled, fast to run (plain diffusers always)")
    gpu.add_argument("--batches", default="2,4", help="batch sizes for the batch runs")
    gpu.add_argument("--compile", choices=("off", "on", "max"),
                     help="compile setting of the compiled and fast runs (default: on with CUDA)")
    gpu.add_argument("--low-memory-gib", type=float, default=8.0,
                     help="GPU memory the low profile may use (emulates a small card)")
    gpu.add_argument("--quick", action="store_true", help="64x64, 4 frames, 2 steps (CPU tests)")
    gpu.add_argument("--json", help="also write every number to this file")
    gpu.set_defaults(func=cmd_gpu)
