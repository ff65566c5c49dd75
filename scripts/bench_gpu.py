"""`scripts/bench.py gpu`: the project's generator against plain diffusers, same card, same run.

    python scripts/bench.py gpu [--arch svd-xt-random|tiny] [--model DIR] [--size 1024x576]
                                [--frames 25] [--steps 25] [--profiles full,low]
                                [--low-memory-gib 8] [--quick] [--json OUT.json]

Random-weight SVD-XT (`--arch svd-xt-random`, the default on CUDA) has the compute and memory
of the real checkpoint; `--model DIR` uses real weights. On a CPU it runs the tiny model at a
small size and still prints the table (CI runs it that way). For each run: seconds per video,
ratio to plain diffusers, peak GPU memory, GPU busy share (NVML, when available), the phases
(image encode, denoise, decode, MP4 encode), and PSNR against plain diffusers' frames.
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


def cmd_gpu(args) -> int:
    import torch

    from inference.base import GenerationRequest
    from inference.encode import encode_mp4
    from inference.svd import SvdGenerator
    from PIL import Image

    if args.quick:
        args.size, args.frames, args.steps = (64, 64), 4, 2
    pipe, device, arch = build(args)
    cuda = device == "cuda"
    w, h = args.size
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    busy = GpuBusy()

    def peak_reset():
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak() -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None

    def baseline():
        return pipe(image, height=h, width=w, num_frames=args.frames, num_inference_steps=args.steps,
                    decode_chunk_size=8, min_guidance_scale=1.0, max_guidance_scale=3.0,
                    generator=torch.Generator("cpu").manual_seed(1), output_type="np").frames[0]

    timings: dict[str, float] = {}
    for name in ("_encode_image", "_encode_vae_image", "decode_latents"):   # phase timers
        original = getattr(pipe, name)

        def timed(*a, _original=original, _name=name, **kw):
            sync()
            t = time.perf_counter()
            out = _original(*a, **kw)
            sync()
            timings[_name] = timings.get(_name, 0.0) + time.perf_counter() - t
            return out
        setattr(pipe, name, timed)

    rows, results = [], {"arch": arch, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
                         "torch": torch.__version__, "size": f"{w}x{h}", "frames": args.frames,
                         "steps": args.steps, "runs": {}}
    baseline()                                            # warm-up
    peak_reset()
    sync()
    t = time.perf_counter()
    with busy.measure():
        reference = baseline()
        sync()
    base_s = time.perf_counter() - t
    reference = (np.clip(reference, 0, 1) * 255 + 0.5).astype(np.uint8)
    results["runs"]["plain diffusers (decode chunk 8)"] = {"s": round(base_s, 2), "peak_gib": peak(),
                                                          "busy": busy.percent}

    gen = SvdGenerator(pipe, device, arch, default_frames=args.frames, default_steps=args.steps)
    request = GenerationRequest(image=image, seed=1, cfg_scale=3.0)
    total_memory = torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None
    for profile in args.profiles.split(","):
        gen.set_profile(profile)
        limited = cuda and profile == "low" and args.low_memory_gib
        if limited:                                       # emulate a small card
            torch.cuda.set_per_process_memory_fraction(args.low_memory_gib / total_memory)
        timings.clear()
        peak_reset()
        sync()
        t = time.perf_counter()
        name = f"svd-server {profile}" + (f" (limit {args.low_memory_gib} GiB)" if limited else "")
        try:
            with busy.measure():
                frames = gen.generate(request)
                sync()
        except torch.OutOfMemoryError as exc:            # a result too: this profile does not fit
            results["runs"][name] = {"s": None, "error": f"out of memory: {str(exc)[:160]}"}
            if limited:
                torch.cuda.set_per_process_memory_fraction(1.0)
            continue
        gen_s = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as tmp:
            t2 = time.perf_counter()
            encode_mp4(frames, Path(tmp) / "v.mp4", fps=7)
            mp4_s = time.perf_counter() - t2
        if limited:
            torch.cuda.set_per_process_memory_fraction(1.0)
        image_s = timings.get("_encode_image", 0) + timings.get("_encode_vae_image", 0)
        decode_s = timings.get("decode_latents", 0)
        results["runs"][name] = {
            "s": round(gen_s + mp4_s, 2), "generate_s": round(gen_s, 2), "peak_gib": peak(),
            "busy": busy.percent, "image_encode_s": round(image_s, 3),
            "denoise_s": round(gen_s - image_s - decode_s, 3), "decode_s": round(decode_s, 3),
            "mp4_s": round(mp4_s, 3), "psnr_vs_plain": psnr(frames, reference),
            "max_abs_diff": int(np.abs(frames.astype(int) - reference.astype(int)).max())}
    gen.set_profile("full")

    for name, r in results["runs"].items():
        if r["s"] is None:
            rows.append((name, r["error"][:60], "", None))
            continue
        ratio = r["s"] / results["runs"]["plain diffusers (decode chunk 8)"]["s"]
        phases = (f"img {r['image_encode_s']:.2f} / denoise {r['denoise_s']:.2f} / decode "
                  f"{r['decode_s']:.2f} / mp4 {r['mp4_s']:.2f}") if "mp4_s" in r else ""
        quality = f"PSNR {r['psnr_vs_plain']} dB, max diff {r['max_abs_diff']}" if "psnr_vs_plain" in r else ""
        rows.append((name, f"{r['s']:.2f} s x{ratio:.2f}, peak {r['peak_gib']} GiB, "
                           f"busy {r['busy']}%", "; ".join(p for p in (phases, quality) if p), None))
    print_table(f"svd-server GPU benchmark: {arch} on {results['device']}, {w}x{h}, "
                f"{args.frames} frames, {args.steps} steps", rows)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    return 0


def add_parser(sub) -> None:
    gpu = sub.add_parser("gpu", help="the generator against plain diffusers on one device")
    gpu.add_argument("--arch", default="svd-xt-random", choices=("svd-xt-random", "tiny"))
    gpu.add_argument("--model", help="a local diffusers directory with real weights")
    gpu.add_argument("--size", default=(1024, 576), type=size_arg)
    gpu.add_argument("--frames", type=int, default=25)
    gpu.add_argument("--steps", type=int, default=25)
    gpu.add_argument("--profiles", default="full,low", help="memory profiles to run")
    gpu.add_argument("--low-memory-gib", type=float, default=8.0,
                     help="GPU memory the low profile may use (emulates a small card)")
    gpu.add_argument("--quick", action="store_true", help="64x64, 4 frames, 2 steps (CPU tests)")
    gpu.add_argument("--json", help="also write every number to this file")
    gpu.set_defaults(func=cmd_gpu)
