"""`svd-server doctor`: is this machine ready to serve? One line per check, and what to fix.

OK / WARN / FAIL; exit 1 when anything FAILs. Reads nothing secret aloud: API keys are
counted, never printed, and a database password is masked.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from app.config import load_settings

GIB = 1024 ** 3
MIN_VRAM_GIB = 16          # SVD-XT at full speed; lower-memory settings get by with less
MIN_DISK_GIB = 5
DOWNLOAD_HELP = "HF_TOKEN=hf_... python scripts/download_weights.py"
# What StableVideoDiffusionPipeline loads besides the configs: fp16 first, as the server does.
WEIGHT_FILES = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model",
                "image_encoder": "model"}


class Report:
    def __init__(self):
        self.failures = self.warnings = 0

    def line(self, status: str, name: str, detail: str, fix: str | None = None) -> None:
        self.failures += status == "FAIL"
        self.warnings += status == "WARN"
        print(f"[{status:^4}] {name:<10} {detail}", flush=True)
        if fix:
            print(f"{'':18}fix: {fix}", flush=True)


def check_torch(r: Report):
    """Returns torch, or None when it is missing; reports CUDA devices and their memory."""
    try:
        import torch
    except Exception as exc:       # noqa: BLE001
        r.line("FAIL", "torch", f"not importable ({exc})", "make install")
        return None
    r.line("OK", "torch", f"{torch.__version__}")
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            why, fix = "this torch is a CPU-only build", "on a GPU machine, install the CUDA build of torch"
        else:
            why, fix = "no NVIDIA GPU or driver visible", "check nvidia-smi and CUDA_VISIBLE_DEVICES"
        r.line("WARN", "CUDA", f"not available: {why}; only the tiny random-weight model can run", fix)
        return torch
    r.line("OK", "CUDA", f"available (CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s))")
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        detail = (f"cuda:{i} {torch.cuda.get_device_name(i)}: {total / GIB:.1f} GiB total, "
                  f"{free / GIB:.1f} GiB free")
        if total < MIN_VRAM_GIB * GIB:
            r.line("WARN", "GPU", detail, f"SVD-XT wants ~{MIN_VRAM_GIB} GiB at full speed; with "
                   "less it runs slower (lower-memory retries, CPU offload) or fewer SVD_NUM_FRAMES")
        elif free < MIN_VRAM_GIB * GIB:
            r.line("WARN", "GPU", detail, "other processes hold GPU memory (see nvidia-smi)")
        else:
            r.line("OK", "GPU", detail)
    return torch


def check_model(r: Report, settings, torch):
    """Which model `serve` would run; returns the ModelChoice or None."""
    if torch is None:
        r.line("FAIL", "model", f"SVD_MODEL={settings.model}: cannot be resolved without torch")
        return None
    from inference.loader import ModelUnavailable, resolve_model
    try:
        choice = resolve_model(settings.model, unet=settings.unet)
    except ModelUnavailable as exc:
        r.line("FAIL", "model", f"SVD_MODEL={settings.model}: cannot be served", str(exc))
        return None
    if choice.kind == "tiny":
        status = "WARN" if choice.fallback_reason else "OK"
        why = choice.fallback_reason or "on purpose; its videos are noise"
        r.line(status, "model", f"SVD_MODEL={settings.model} -> tiny random-weight model ({why})")
    elif choice.kind == "svd-xt-random":
        r.line("WARN", "model", f"SVD_MODEL={settings.model} -> SVD-XT's architecture with RANDOM "
               f"weights on {choice.device}: for benchmarks; its videos are noise")
    elif choice.preset is not None:
        p = choice.preset
        sampler = settings.scheduler or p.scheduler
        r.line("OK", "model", f"SVD_MODEL={settings.model} -> preset {p.name}: {p.repo}"
               f"{' + UNet ' + Path(choice.unet).name if choice.unet else ''}, {sampler} sampler, "
               f"{p.frames} frames, {p.steps} steps, on {choice.device}")
    else:
        r.line("OK", "model", f"SVD_MODEL={settings.model} -> {choice.source} on {choice.device}")
    if choice.unet and (choice.preset is None or not choice.preset.unet_repo):
        r.line("OK", "UNet", f"SVD_UNET={choice.unet}: loaded over the model's UNet at start "
               "(keys and shapes checked then)")
    return choice


def check_speed(r: Report, settings, choice) -> None:
    """The speed settings (docs/performance.md), and whether this machine can honour them."""
    from inference.speed import resolve
    device = choice.device if choice is not None else "cpu"
    try:
        speed = resolve(settings.mode, settings.compile, settings.step_cache, settings.fp8, device)
    except ValueError as exc:
        r.line("FAIL", "speed", str(exc), "set SVD_FP8=auto (or off)")
        return
    r.line("OK", "speed", f"mode {settings.mode}, compile {speed.compile}, step cache "
           f"{speed.step_cache}, FP8 {'on' if speed.fp8 else 'off'}, batch up to "
           f"{settings.max_batch}, overlap {'on' if settings.overlap else 'off'}")
    if not speed.compiled:
        return
    if device == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        r.line("FAIL", "compile", "compiling for a CPU needs a C++ compiler; none found",
               "install g++, or set SVD_COMPILE=off")
        return
    cache = settings.compile_cache_dir
    files = sum(1 for p in cache.rglob("*") if p.is_file()) if cache.is_dir() else 0
    if files:
        r.line("OK", "compile", f"{files} cached artefacts in {cache}: a start loads them")
    else:
        r.line("WARN", "compile", f"nothing cached in {cache} yet",
               "the first start compiles (minutes) before it says ready; later starts reuse it")


def _missing_weights(source: str) -> tuple[str, list[str]]:
    """(where, missing files) for a local diffusers directory or a repo in the HF cache."""
    names = {c: [f"{c}/{stem}.fp16.safetensors", f"{c}/{stem}.safetensors"]
             for c, stem in WEIGHT_FILES.items()}
    if os.path.isdir(source):
        have = lambda path: (Path(source) / path).is_file()   # noqa: E731
        where = source
    else:
        from huggingface_hub import constants, try_to_load_from_cache
        have = lambda path: isinstance(try_to_load_from_cache(source, path), str)  # noqa: E731
        where = f"{source} in {constants.HF_HUB_CACHE}"
    missing = [] if have("model_index.json") else ["model_index.json"]
    missing += [options[0] for options in names.values() if not any(map(have, options))]
    return where, missing


def check_weights(r: Report, settings, choice) -> None:
    from inference.presets import SVD_XT_REPO
    if choice is None and settings.model.strip() not in ("auto", ""):
        return                     # the model line already says what is wrong with SVD_MODEL
    source = choice.source if choice is not None and choice.kind == "svd" else SVD_XT_REPO
    # Needed when SVD is what `serve` would run, or `auto` found CUDA but not these weights.
    needed = choice is None or choice.kind == "svd"
    where, missing = _missing_weights(source)
    if not missing:
        r.line("OK", "weights", f"{where}: complete")
        return
    status = "FAIL" if needed else "WARN"
    what = "not found" if "model_index.json" in missing else "incomplete: missing " + ", ".join(missing)
    note = "" if status == "FAIL" else " (not needed for the tiny model)"
    r.line(status, "weights", f"{where}: {what}{note}",
           DOWNLOAD_HELP + (f" --local-dir {source}" if os.path.isdir(source) else ""))


def check_encoder(r: Report) -> None:
    try:
        import av
        import numpy as np

        from inference.encode import encode_mp4
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "check.mp4")
            frames = np.zeros((2, 64, 64, 3), dtype=np.uint8)
            frames[1] = 255
            encode_mp4(frames, path, fps=7)
            with av.open(path) as c:
                codec = c.streams.video[0].codec_context.name
                n = sum(1 for _ in c.decode(video=0))
        if (codec, n) != ("h264", 2):
            raise RuntimeError(f"test clip came back as {codec} with {n} frames")
        libav = ".".join(map(str, av.library_versions.get("libavcodec", ())))
        r.line("OK", "encoder", f"PyAV {av.__version__} (libavcodec {libav}), libx264: "
               "2-frame 64x64 test clip encoded and decoded")
    except Exception as exc:       # noqa: BLE001
        r.line("FAIL", "encoder", f"H.264 encoding does not work: {type(exc).__name__}: {exc}",
               "reinstall PyAV (pip install --force-reinstall av); its wheels bundle FFmpeg with libx264")


def check_database(r: Report, settings) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from app.jobs.migrate import SchemaTooNew, check_not_newer, current_revision, head_revision
    from app.jobs.tables import sqlalchemy_url
    url = sqlalchemy_url(settings.resolved_database_url)
    shown = make_url(url).render_as_string(hide_password=True)
    head = head_revision()
    if url.startswith("sqlite"):
        db_file = make_url(url).database
        if db_file and not Path(db_file).exists():
            r.line("OK", "database", f"{shown}: not created yet; `svd-server serve` creates it "
                   f"(schema {head}) on first start")
            return
        engine = create_engine(url)
    else:
        engine = create_engine(url, connect_args={"connect_timeout": 5})
    try:
        current = current_revision(engine)
        check_not_newer(engine)
    except SchemaTooNew as exc:
        r.line("FAIL", "database", f"{shown}: {exc}", "upgrade svd-server")
        return
    except Exception as exc:       # noqa: BLE001
        r.line("FAIL", "database", f"{shown}: cannot connect: {type(exc).__name__}: "
               f"{str(exc).splitlines()[0][:200]}", "check SVD_DATABASE_URL and that the database is up")
        return
    finally:
        engine.dispose()
    if current == head:
        r.line("OK", "database", f"{shown}: schema at head ({head})")
    else:
        auto = " (`serve` does it by itself on SQLite)" if url.startswith("sqlite") else ""
        r.line("WARN", "database", f"{shown}: schema {current or 'empty'}, head {head}",
               "svd-server db upgrade" + auto)


def check_disk(r: Report, settings) -> None:
    data = settings.data_dir.resolve()
    existing = next(p for p in (data, *data.parents) if p.exists())
    if existing == data:
        try:
            with tempfile.NamedTemporaryFile(dir=data):
                pass
            r.line("OK", "data dir", f"{data}: writable")
        except OSError as exc:
            r.line("FAIL", "data dir", f"{data}: not writable ({exc.strerror})",
                   "fix its permissions or point SVD_DATA_DIR elsewhere")
    elif os.access(existing, os.W_OK):
        r.line("OK", "data dir", f"{data}: will be created on first start")
    else:
        r.line("FAIL", "data dir", f"{data}: cannot be created ({existing} is not writable)",
               "create it or point SVD_DATA_DIR elsewhere")
    free = shutil.disk_usage(existing).free
    if free < MIN_DISK_GIB * GIB:
        r.line("WARN", "disk", f"{free / GIB:.1f} GiB free under {existing}",
               f"free some space: results and the database need room (>= {MIN_DISK_GIB} GiB)")
    else:
        r.line("OK", "disk", f"{free / GIB:.1f} GiB free under {existing}")


def check_keys(r: Report, settings) -> None:
    if settings.api_keys:
        r.line("OK", "API keys", f"{len(settings.api_keys)} key(s) in SVD_API_KEYS")
        return
    path = settings.data_dir / "api_key"
    if not path.exists():
        r.line("OK", "API keys", f"none yet: `serve` generates one into {path} on first start")
    elif not path.read_text().strip():
        r.line("FAIL", "API keys", f"{path} is empty: `serve` refuses to start",
               "delete it to get a new key, or set SVD_API_KEYS")
    elif path.stat().st_mode & 0o077:
        r.line("WARN", "API keys", f"one key in {path}, readable by other users", f"chmod 600 {path}")
    else:
        r.line("OK", "API keys", f"one key in {path} (mode 0600)")


def add_parser(sub) -> None:
    doctor = sub.add_parser("doctor", help="check GPU, model, weights, encoder, database, disk, keys")
    doctor.set_defaults(func=run)


def run(args=None) -> int:
    r = Report()
    py = sys.version_info
    r.line("OK" if py >= (3, 10) else "FAIL", "python", f"{sys.version.split()[0]} ({sys.executable})",
           None if py >= (3, 10) else "svd-server needs Python 3.10 or newer")
    settings = load_settings()
    torch = check_torch(r)
    if settings is None:
        check_encoder(r)
        r.line("FAIL", "settings", "invalid SVD_* settings (above); model, database, disk and "
               "keys not checked", "fix the variables named above")
    else:
        choice = check_model(r, settings, torch)
        if torch is not None:
            check_weights(r, settings, choice)
            check_speed(r, settings, choice)
        check_encoder(r)
        check_database(r, settings)
        check_disk(r, settings)
        check_keys(r, settings)
    print(f"{r.failures} failure(s), {r.warnings} warning(s)")
    return 1 if r.failures else 0
