"""`svd-server generate` (one video, locally or through a server) and `svd-server doctor`.

Local runs use the same SVD_* settings as the server: allowed sizes, model, frames, steps,
fps, CPU threads. Exit status: 0 done, 1 failed, 2 bad arguments or configuration.
torch and httpx are imported only inside the commands that need them.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from app.jobs.service import MAX_SEED, random_seed


class Failed(Exception):
    """Stop the command with a message and an exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class Bar:
    """Progress on stderr, one line per phase: rich's bars on a terminal, plain lines
    otherwise (logs, CI): on a new phase, at the end of one, and at most every 2 s between."""

    def __init__(self):
        self.progress = self.task = None
        self.phase = self._last = None
        self._printed_at = 0.0
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn)
            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description:<10}"),
                                     BarColumn(), TextColumn("{task.fields[detail]}"),
                                     TimeElapsedColumn(), console=Console(stderr=True))
            self.progress.start()

    def show(self, phase: str, done: float | None = None, total: float | None = None,
             detail: str = "") -> None:
        if self.progress is None:
            now = time.monotonic()
            if (phase, detail) != self._last and (
                    phase != self.phase or (total and done == total) or now - self._printed_at >= 2):
                self._last, self.phase, self._printed_at = (phase, detail), phase, now
                print(f"{phase} {detail}".rstrip(), file=sys.stderr, flush=True)
            return
        if phase != self.phase:
            self._finish_task()
            self.task = self.progress.add_task(phase, total=total, detail=detail)
            self.phase = phase
        self.progress.update(self.task, total=total, completed=done or 0, detail=detail)

    def _finish_task(self) -> None:
        if self.task is not None:
            total = self.progress.tasks[-1].total or 1     # tasks are added in order
            self.progress.update(self.task, total=total, completed=total)

    def close(self, ok: bool = True) -> None:
        if self.progress is not None:
            if ok:
                self._finish_task()
            self.progress.stop()


def _ranged(kind, low, high):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is outside {low}..{high}")
        return value
    return parse


def add_commands(sub) -> None:
    """Register `generate` and `doctor` on app.cli's subparsers."""
    gen = sub.add_parser("generate", help="make one video from an image, on this machine "
                                          "or through a server (--server)")
    gen.add_argument("image", help="PNG or JPEG at one of SVD_ALLOWED_SIZES")
    gen.add_argument("-o", "--output", required=True, help="where to write the MP4")
    gen.add_argument("--seed", type=_ranged(int, 0, MAX_SEED), default=0, help="0: random")
    gen.add_argument("--cfg-scale", type=_ranged(float, 0, 10), default=1.8,
                     help="guidance on the last frame, 0..10 (default %(default)g)")
    gen.add_argument("--motion-bucket-id", type=_ranged(int, 1, 255), default=127,
                     help="more motion when higher, 1..255 (default %(default)s)")
    gen.add_argument("--frames", type=_ranged(int, 1, 128), help="overrides SVD_NUM_FRAMES")
    gen.add_argument("--steps", type=_ranged(int, 1, 200), help="overrides SVD_STEPS")
    gen.add_argument("--server", default=os.environ.get("SVD_BASE_URL") or None,
                     help="generate on this svd-server (or SVD_BASE_URL) instead of locally")
    gen.add_argument("--api-key", default=os.environ.get("SVD_API_KEY") or None,
                     help="key for --server (default: SVD_API_KEY, else DATA_DIR/api_key)")
    gen.add_argument("--local", action="store_true", help="run here even if SVD_BASE_URL is set")
    gen.add_argument("--timeout", type=float, default=3600.0,
                     help="--server: give up after this many seconds (default %(default)g)")
    gen.set_defaults(func=cmd_generate)
    doctor = sub.add_parser("doctor", help="check GPU, model, weights, encoder, database, disk, keys")
    doctor.set_defaults(func=cmd_doctor)


def cmd_doctor(args) -> int:
    from app.client_doctor import run_doctor
    return run_doctor()


def cmd_generate(args) -> int:
    from app.cli import load_settings
    out = Path(args.output)
    bar = None
    try:
        if not out.parent.resolve().is_dir():
            raise Failed(f"output directory {out.parent} does not exist", 2)
        try:
            data = Path(args.image).read_bytes()
        except OSError as exc:
            raise Failed(f"cannot read {args.image}: {exc.strerror or exc}", 2) from None
        settings = load_settings()
        if settings is None:
            return 2
        bar = Bar()
        if args.server and not args.local:
            from app.client_remote import generate_remote
            seed = generate_remote(args, settings, data, out, bar)
        else:
            seed = _local(args, settings, data, out, bar)
        bar.close()
    except Failed as exc:
        if bar is not None:
            bar.close(ok=False)
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        if bar is not None:
            bar.close(ok=False)
        print("interrupted", file=sys.stderr)
        return 130
    print(f"seed: {seed}")
    print(f"saved: {out}")
    return 0


def write_atomic(out: Path, write) -> None:
    """`write(temp_path)`, then rename into place: never a half-written OUT."""
    temp = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        write(temp)
        os.replace(temp, out)
    finally:
        temp.unlink(missing_ok=True)


def _local(args, settings, data: bytes, out: Path, bar: Bar) -> int:
    """Validate like the server, load the model, generate, encode; returns the seed."""
    from inference.base import LOW_MEMORY_LEVELS, GenerationRequest, is_out_of_memory
    from inference.encode import encode_mp4
    from inference.images import ImageError, decode_rgb, probe

    def refuse(w: int, h: int) -> ImageError:
        if settings.any_size:
            return ImageError(f"dimensions {w}x{h} are not supported: sides must be multiples of "
                              f"64, with at most {settings.max_pixels} pixels (SVD_ALLOWED_SIZES=any)")
        listed = ", ".join(f"{a}x{b}" for a, b in settings.allowed_sizes)
        return ImageError(f"dimensions {w}x{h} are not supported; use one of {listed} "
                          "(SVD_ALLOWED_SIZES)")

    try:                              # as the server checks it: header first, then decoded
        info = probe(data)
        if not settings.size_allowed(info.width, info.height):
            raise refuse(info.width, info.height)
        image = decode_rgb(data, info)
        if not settings.size_allowed(*image.size, exact=True):
            raise refuse(*image.size)
    except ImageError as exc:
        raise Failed(f"{args.image}: image {exc}") from None

    bar.show("loading", detail=f"model {settings.model}")
    from inference.loader import ModelUnavailable, load_generator, resolve_model
    try:
        choice = resolve_model(settings.model)
        if choice.fallback_reason:
            bar.show("loading", detail="tiny model (fallback)")
            print(f"WARNING: SVD_MODEL={settings.model}: {choice.fallback_reason}",
                  file=sys.stderr, flush=True)
        options = settings.generator_options() | dict(
            num_frames=args.frames or settings.num_frames, steps=args.steps or settings.steps,
            warmup="off")        # one video: warming up first would only add time
        gen = load_generator(choice, **options)
    except ModelUnavailable as exc:
        raise Failed(str(exc), 2) from None
    seed = args.seed or random_seed()
    print(f"model: {gen.description}; seed {seed}, {gen.default_frames} frames, "
          f"{gen.default_steps} steps", file=sys.stderr, flush=True)
    request = GenerationRequest(image=image, seed=seed, cfg_scale=args.cfg_scale,
                                motion_bucket_id=args.motion_bucket_id)

    def on_step(done: int, total: int) -> None:
        bar.show("denoising", done, total, f"step {done}/{total}")

    for level in range(LOW_MEMORY_LEVELS + 1):
        bar.show("denoising", 0, gen.default_steps, f"step 0/{gen.default_steps}")
        try:
            frames = gen.generate(request, on_step, low_memory=level)
            break
        except Exception as exc:
            if not is_out_of_memory(exc) or level == LOW_MEMORY_LEVELS:
                raise Failed(f"generation failed: {type(exc).__name__}: {exc}") from None
            print(f"out of GPU memory: retrying with lower-memory settings ({level + 1})",
                  file=sys.stderr, flush=True)
    bar.show("encoding", detail=f"{len(frames)} frames, H.264 at {settings.output_fps} fps")
    try:
        write_atomic(out, lambda p: encode_mp4(frames, p, fps=settings.output_fps))
    except OSError as exc:
        raise Failed(f"cannot write {out}: {exc.strerror or exc}") from None
    except Exception as exc:      # noqa: BLE001 - said plainly, no traceback
        raise Failed(f"encoding failed: {type(exc).__name__}: {exc}") from None
    return seed
