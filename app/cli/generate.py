"""`svd-server generate`: one video per image, on this machine or through a server
(app/cli/remote.py).

Local runs use the same SVD_* settings as the server: allowed sizes, model, frames, steps,
fps, CPU threads. Images of another size are first fitted to an allowed one (app/cli/fit.py).
-o's suffix picks the container: .mp4 (or no suffix) H.264, .webm VP9, .gif an animated GIF;
any other suffix is refused. Several images (files or folders) make one MP4 each into the
folder -o; one that fails is reported and the others go on. Exit status: 0 all done, 1 any
failed, 2 bad arguments or configuration, 130 interrupted. torch and httpx are imported only
inside the commands that need them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.cli.console import CODEC_NAMES, Bar, Failed, video_format, write_atomic
from app.cli.fit import MODES, fit_image
from app.config import load_settings
from app.jobs.params import MAX_SEED, check_image, random_seed
from inference.images import ImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
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
    gen = sub.add_parser("generate", help="make one video per image, on this machine or "
                                          "through a server (--server)",
                         description="Make one video per image, on this machine or through a "
                                     "server (--server). Exit status: 0 all done, 1 any failed, "
                                     "2 bad arguments, 130 interrupted.")
    gen.add_argument("images", nargs="+", metavar="IMAGE",
                     help="a PNG or JPEG, or a folder of them (its .png/.jpg/.jpeg files, sorted); "
                          "several make one video each")
    gen.add_argument("-o", "--output", required=True,
                     help="the video to write, in the format its suffix names: .mp4 (H.264), "
                          ".webm (VP9) or .gif (animated GIF); or an existing folder, which gets "
                          "NAME.mp4 for each NAME.png/.jpg (needed for several images or a "
                          "folder of them)")
    gen.add_argument("--fit", choices=MODES, default="crop",
                     help="an image not at an allowed size (SVD_ALLOWED_SIZES; the server's with "
                          "--server), after its EXIF orientation, is scaled to the allowed size nearest in aspect ratio, then centre-cropped "
                          "(crop, the default) or padded with black (pad); none: refuse it, as the "
                          "server does. With SVD_ALLOWED_SIZES=any: the nearest multiple-of-64 "
                          "size within SVD_MAX_PIXELS")
    gen.add_argument("--seed", type=_ranged(int, 0, MAX_SEED), default=0,
                     help="0: random (a new one for each image)")
    gen.add_argument("--cfg-scale", type=_ranged(float, 0, 10), default=1.8,
                     help="guidance on the last frame, 0..10 (default %(default)g)")
    gen.add_argument("--motion-bucket-id", type=_ranged(int, 1, 255), default=127,
                     help="more motion when higher, 1..255 (default %(default)s)")
    gen.add_argument("--frames", type=_ranged(int, 1, 128), help="overrides SVD_NUM_FRAMES")
    gen.add_argument("--steps", type=_ranged(int, 1, 200), help="overrides SVD_STEPS")
    gen.add_argument("--server", help="generate on this svd-server (default: SVD_BASE_URL) "
                                      "instead of locally; several images are all submitted, "
                                      "then awaited together")
    gen.add_argument("--api-key", help="key for --server (default: SVD_API_KEY, else "
                                       "DATA_DIR/api_key)")
    gen.add_argument("--local", action="store_true", help="run here even if SVD_BASE_URL is set")
    gen.add_argument("--timeout", type=float, default=3600.0,
                     help="--server: give up after this many seconds, for all the images "
                          "together (default %(default)g)")
    gen.set_defaults(func=run)


def run(args) -> int:
    bar = None
    try:
        jobs, several = _plan(args)
        if not several:
            try:
                data = jobs[0][1].read_bytes()
            except OSError as exc:
                raise Failed(f"cannot read {jobs[0][0]}: {exc.strerror or exc}", 2) from None
        settings = load_settings()
        if settings is None:
            return 2
        server = None if args.local else (args.server or settings.base_url)
        sizes = (settings, "SVD_ALLOWED_SIZES")      # what --fit fits to: the server's, if any
        if server and args.fit != "none":
            from app.cli.remote import server_sizes
            sizes = server_sizes(server, settings)
        if several:
            bar = Bar(len(jobs))
            failed = _several(args, settings, sizes, server, jobs, bar)
            bar.close(ok=not failed)
            return 1 if failed else 0
        name, _, out = jobs[0]
        try:
            data = _fitted(data, sizes, args.fit, name)
            image = None if server else _checked(data, settings)
        except Failed as exc:
            raise Failed(f"{name}: {exc}") from None
        bar = Bar()
        if server:
            from app.cli.remote import generate_remote
            [seed] = generate_remote(server, args, settings, [(name, data, out)], bar)
        else:
            seed = args.seed or random_seed()
            _make(_load(args, settings, bar, seed), args, settings, image, seed, out, bar)
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


def _plan(args) -> tuple[list[tuple[str, Path, Path]], bool]:
    """[(name as shown, image file, video to write)], and whether it is a run of several (more
    than one image, a folder, or -o a folder); Failed (2) for a path that is not there, an
    empty folder, -o not a folder for several, a video suffix that is not .mp4/.webm/.gif, or
    two images that would share a video."""
    out = Path(args.output)
    files: list[tuple[str, Path]] = []
    for arg in args.images:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                           and not p.name.startswith(".") and p.is_file())
            if not found:
                raise Failed(f"{arg}: no .png, .jpg or .jpeg files in this folder", 2)
            files += [(str(p), p) for p in found]
        elif path.exists():
            files.append((arg, path))
        else:
            raise Failed(f"cannot read {arg}: No such file or directory", 2)
    several = len(files) > 1 or out.is_dir() or any(Path(a).is_dir() for a in args.images)
    if not several:
        if not out.parent.resolve().is_dir():
            raise Failed(f"output directory {out.parent} does not exist", 2)
        video_format(out)                   # an unknown suffix: refused before any work
        return [(files[0][0], files[0][1], out)], False
    if not out.is_dir():
        raise Failed(f"-o {out} is not a folder: with several images, -o names an existing "
                     "folder for their videos", 2)
    jobs, by_out = [], {}
    for name, path in files:
        mp4 = out / f"{path.stem}.mp4"
        if mp4 in by_out:
            raise Failed(f"{name} is given twice" if by_out[mp4] == name else
                         f"{by_out[mp4]} and {name} would both be saved as {mp4}; rename one", 2)
        by_out[mp4] = name
        jobs.append((name, path, mp4))
    return jobs, True


def _several(args, settings, sizes, server, jobs, bar: Bar) -> int:
    """One video per job, each reported on its own line as it ends; returns how many failed."""
    ended = {"done": 0, "failed": 0}

    def report(index: int, seed, error: str | None) -> None:
        name, _, out = jobs[index]
        if error:
            ended["failed"] += 1
            print(f"{name}: error: {error}", file=sys.stderr, flush=True)
        else:
            print(f"{name} -> {out} (seed {seed})", flush=True)
        ended["done"] += 1
        bar.count(ended["done"], ended["failed"])

    if server:
        items, index = [], []
        for i, (name, path, out) in enumerate(jobs):       # all fitted first, then all sent
            try:
                items.append((name, _fitted(_read(path), sizes, args.fit, name), out))
                index.append(i)
            except Failed as exc:
                report(i, None, str(exc))
        if items:
            from app.cli.remote import generate_remote
            generate_remote(server, args, settings, items, bar,
                            lambda k, seed, error: report(index[k], seed, error))
    else:
        gen = None                  # loaded once, at the first image that can be used
        for i, (name, path, out) in enumerate(jobs):
            try:
                image = _checked(_fitted(_read(path), sizes, args.fit, name), settings)
                if gen is None:
                    gen = _load(args, settings, bar)
                seed = args.seed or random_seed()
                _make(gen, args, settings, image, seed, out, bar, name)
            except Failed as exc:
                if exc.code == 2:           # the model, not this image: stop
                    raise
                report(i, None, str(exc))
            else:
                report(i, seed, None)
    made = ended["done"] - ended["failed"]
    print(f"{made} of {len(jobs)} videos made" + (f", {ended['failed']} failed" if ended["failed"]
          else "") + f" (in {Path(args.output)})", file=sys.stderr, flush=True)
    return ended["failed"]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise Failed(f"cannot read it: {exc.strerror or exc}") from None


def _fitted(data: bytes, sizes, fit: str, name: str) -> bytes:
    """The image at an allowed size (--fit; `sizes`: the settings to fit to and what to call
    them), saying so on stderr; Failed for a broken file."""
    try:
        data, note = fit_image(data, sizes[0], fit, name, sizes_from=sizes[1])
    except ImageError as exc:
        raise Failed(f"image {exc}") from None
    if note:
        print(note, file=sys.stderr, flush=True)
    return data


def _checked(data: bytes, settings):
    """Decoded and validated as the server would; Failed saying why not."""
    try:
        return check_image(data, settings)
    except ImageError as exc:
        raise Failed(f"image {exc}") from None


def _load(args, settings, bar: Bar, seed: int | None = None):
    """The generator, with SVD_* settings and --frames/--steps; Failed (2) if unavailable."""
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
            warmup="off")        # warming up first would only add time here
        gen = load_generator(choice, **options)
    except ModelUnavailable as exc:
        raise Failed(str(exc), 2) from None
    print(f"model: {gen.description}; " + (f"seed {seed}, " if seed else "") +
          f"{gen.default_frames} frames, {gen.default_steps} steps", file=sys.stderr, flush=True)
    return gen


def _make(gen, args, settings, image, seed: int, out: Path, bar: Bar, name: str = "") -> None:
    """Generate from the validated `image` and encode to `out`; Failed saying what went wrong."""
    from inference.base import GenerationRequest, with_less_memory
    from inference.encode import encode_video

    named = f"{name}: " if name else ""
    request = GenerationRequest(image=image, seed=seed, cfg_scale=args.cfg_scale,
                                motion_bucket_id=args.motion_bucket_id)

    def on_step(done: int, total: int) -> None:
        bar.show("denoising", done, total, f"{named}step {done}/{total}")

    def attempt(level: int):
        on_step(0, gen.default_steps)
        return gen.generate(request, on_step, low_memory=level)

    def on_retry(level: int) -> None:
        print(f"out of GPU memory: retrying with lower-memory settings ({level})",
              file=sys.stderr, flush=True)

    try:
        frames = with_less_memory(attempt, on_retry)
    except Exception as exc:      # noqa: BLE001 - said plainly, no traceback
        raise Failed(f"generation failed: {type(exc).__name__}: {exc}") from None
    fmt = video_format(out)
    bar.show("encoding", detail=f"{named}{len(frames)} frames, {CODEC_NAMES[fmt]} at "
                                f"{settings.output_fps} fps")
    try:
        write_atomic(out, lambda p: encode_video(frames, p, settings.output_fps, fmt))
    except OSError as exc:
        raise Failed(f"cannot write {out}: {exc.strerror or exc}") from None
    except Exception as exc:      # noqa: BLE001 - said plainly, no traceback
        raise Failed(f"encoding failed: {type(exc).__name__}: {exc}") from None
