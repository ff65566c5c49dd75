"""`svd-server generate`: one video, on this machine or through a server (app/cli/remote.py).

Local runs use the same SVD_* settings as the server: allowed sizes, model, frames, steps,
fps, CPU threads. Exit status: 0 done, 1 failed, 2 bad arguments or configuration.
torch and httpx are imported only inside the commands that need them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.cli.console import Bar, Failed, write_atomic
from app.config import load_settings
from app.jobs.params import MAX_SEED, check_image, random_seed


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


def add_parser(sub) -> None:
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
    gen.add_argument("--server", help="generate on this svd-server (default: SVD_BASE_URL) "
                                      "instead of locally")
    gen.add_argument("--api-key", help="key for --server (default: SVD_API_KEY, else "
                                       "DATA_DIR/api_key)")
    gen.add_argument("--local", action="store_true", help="run here even if SVD_BASE_URL is set")
    gen.add_argument("--timeout", type=float, default=3600.0,
                     help="--server: give up after this many seconds (default %(default)g)")
    gen.set_defaults(func=run)


def run(args) -> int:
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
        server = args.server or settings.base_url
        if server and not args.local:
            from app.cli.remote import generate_remote
            seed = generate_remote(server, args, settings, data, out, bar)
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


def _local(args, settings, data: bytes, out: Path, bar: Bar) -> int:
    """Validate like the server, load the model, generate, encode; returns the seed."""
    from inference.base import GenerationRequest, with_less_memory
    from inference.encode import encode_mp4
    from inference.images import ImageError

    try:
        image = check_image(data, settings)
    except ImageError as exc:
        raise Failed(f"{args.image}: image {exc}") from None

    bar.show("loading", detail=f"model {settings.model}")
    from inference.loader import ModelUnavailable, load_generator, resolve_model
    try:
        choice = resolve_model(settings.model, unet=settings.unet)
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

    def attempt(level: int):
        bar.show("denoising", 0, gen.default_steps, f"step 0/{gen.default_steps}")
        return gen.generate(request, on_step, low_memory=level)

    def on_retry(level: int) -> None:
        print(f"out of GPU memory: retrying with lower-memory settings ({level})",
              file=sys.stderr, flush=True)

    try:
        frames = with_less_memory(attempt, on_retry)
    except Exception as exc:      # noqa: BLE001 - said plainly, no traceback
        raise Failed(f"generation failed: {type(exc).__name__}: {exc}") from None
    bar.show("encoding", detail=f"{len(frames)} frames, H.264 at {settings.output_fps} fps")
    try:
        write_atomic(out, lambda p: encode_mp4(frames, p, fps=settings.output_fps))
    except OSError as exc:
        raise Failed(f"cannot write {out}: {exc.strerror or exc}") from None
    except Exception as exc:      # noqa: BLE001 - said plainly, no traceback
        raise Failed(f"encoding failed: {type(exc).__name__}: {exc}") from None
    return seed
