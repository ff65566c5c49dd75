"""Settings: the one place that reads SVD_* variables from the environment; loading them
for the command line with clear errors; the data directory's private folders."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SIZE_RE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")
STABILITY_SIZES = "1024x576,576x1024,768x768"


def parse_sizes(value: str) -> tuple[tuple[int, int], ...]:
    """ "1024x576,576x1024" -> ((1024, 576), (576, 1024)); "any" -> () (see Settings.any_size)."""
    if value.strip().lower() == "any":
        return ()
    sizes = []
    for item in value.split(","):
        if not item.strip():
            continue
        m = SIZE_RE.match(item)
        if not m:
            raise ValueError(f"size {item.strip()!r} is not WIDTHxHEIGHT")
        w, h = int(m.group(1)), int(m.group(2))
        if w <= 0 or h <= 0 or w % 2 or h % 2:
            raise ValueError(f"size {item.strip()!r} must have even, positive sides")
        sizes.append((w, h))
    if not sizes:
        raise ValueError("at least one size is needed")
    return tuple(sizes)


RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")


def parse_rate(value: str) -> tuple[int, float] | None:
    """"150/10s" -> (150, 10.0); "0" or "" -> None (no limit)."""
    if value.strip() in ("", "0", "off"):
        return None
    m = RATE_RE.match(value)
    if not m or int(m.group(1)) == 0 or float(m.group(2)) == 0:
        raise ValueError(f"rate {value!r} is not N/WINDOW such as 150/10s, 60/1m or 0")
    unit = {"s": 1, "m": 60, "h": 3600}[m.group(3) or "s"]
    return int(m.group(1)), float(m.group(2)) * unit


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SVD_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # Comma-separated keys; empty: a random key is generated into DATA_DIR/api_key.
    api_keys: Annotated[tuple[str, ...], NoDecode] = ()
    data_dir: Path = Path("./data")
    database_url: str | None = None         # default: SQLite file in the data dir
    workers: int = Field(1, ge=0, le=64)     # worker threads inside `serve`; 0 = API only
    model: str = "auto"                      # auto | tiny | a preset | HF repo id | local directory
    unet: str = ""                           # a UNet file loaded over the model's (inference/unet_file.py)
    scheduler: Literal["", "euler", "animatelcm"] = ""   # the sampler; empty: the preset's (Euler)
    allowed_sizes: Annotated[tuple[tuple[int, int], ...], NoDecode] = parse_sizes(STABILITY_SIZES)
    num_frames: int | None = Field(None, ge=1, le=128)   # None: the model's default
    steps: int | None = Field(None, ge=1, le=200)        # None: the model's default
    output_fps: int = Field(7, ge=1, le=60)
    max_pixels: int = Field(1024 * 1024, ge=64 * 64)   # with SVD_ALLOWED_SIZES=any
    result_ttl_hours: float = Field(24.0, gt=0)
    job_timeout_s: float = Field(1800.0, gt=0)
    # Beyond the names other tools rely on: tuning with safe defaults.
    max_body_mb: float = Field(10.0, gt=0)   # the hosted API's limit is 10 MiB
    lease_s: float = Field(30.0, gt=0)
    heartbeat_s: float = Field(10.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    sweep_interval_s: float = Field(60.0, gt=0)
    cpu_threads: int = Field(0, ge=0)        # torch threads on a CPU; 0 = all cores but one
    log_level: str = "info"
    # Limits and fairness.
    rate_limit: str = "150/10s"              # generations started per key per window; 0 = off
    max_queued: int = Field(100, ge=0)       # queued jobs in total; 0 = no limit
    max_queued_per_key: int = Field(20, ge=0)
    drain_grace_s: float = Field(30.0, ge=0)  # SIGTERM: how long the running job may finish
    cors_origins: str = ""                   # comma-separated; empty: no CORS headers at all
    # Connections (app/http_guard.py): checked before a request reaches the app.
    max_header_kb: int = Field(64, ge=1, le=1024)   # request line + headers; beyond: 431
    request_timeout_s: float = Field(60.0, gt=0)    # headers, then the body, must arrive within
    max_connections: int = Field(1000, ge=1)        # open connections; beyond: 503 + Retry-After
    max_streams_per_key: int = Field(100, ge=0)     # open event streams per key; 0 = no limit
    # Inputs and results kept per key until they expire; beyond: 429. 0 = no limit.
    max_stored_mb_per_key: float = Field(2048.0, ge=0)
    # Webhooks (app/webhooks.py): targets allowed (host or host:port patterns, e.g.
    # "hooks.example.com,*.corp.example"); none by default.
    webhook_allow: str = ""
    webhook_secret: str = ""                 # empty: generated into DATA_DIR/webhook_secret
    webhook_retry_base_s: float = Field(2.0, gt=0)
    memory_profile: Literal["auto", "full", "balanced", "low"] = "auto"   # inference/svd.py
    # Speed (docs/performance.md). `fast` trades measured quality for speed: fewer default
    # steps, step caching and, on Hopper with torchao, FP8 matmuls.
    mode: Literal["quality", "fast"] = "quality"
    compile: Literal["off", "on", "max"] = "off"   # torch.compile (max: autotuned, no CUDA graphs)
    warmup: Literal["auto", "on", "off"] = "auto"  # auto: warm up at start when compiling
    # Step caching: reuse the UNet's deep features for N-1 of every N steps; None: the
    # mode's choice (quality: off, fast: 3).
    step_cache: int | None = Field(None, ge=1, le=10)
    fp8: Literal["auto", "on", "off"] = "auto"     # auto: in fast mode, where the card has FP8
    max_batch: int = Field(1, ge=1, le=8)          # compatible queued jobs run as one batch
    overlap: bool = True    # encode/store a finished video while the next one denoises
    content_filter: str = ""                 # package.module:function (app/jobs/content_filter.py)
    # Scale-out (docs/scaling.md).
    result_store: Literal["auto", "files", "database"] = "auto"   # auto: files on SQLite
    worker_name: str = ""                    # `svd-server worker`: default <host>/gpu<N>
    # The CLI's remote mode (`svd-server generate`): which server, and the key it sends.
    base_url: str = ""                       # set: generate there unless --local
    api_key: str = ""                        # unset: DATA_DIR/api_key
    # Testing only: SIGKILL this process when a job reaches the phase (see docs/operations.md).
    fault_crash_at: Literal["", "queued", "denoise", "encode", "write"] = ""

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v):
        if isinstance(v, str):
            v = tuple(k.strip() for k in v.split(",") if k.strip())
        # HTTP headers arrive as latin-1 and keys are hashed as UTF-8: a non-ASCII key could
        # never authenticate, so it is refused here rather than silently useless.
        bad = [i + 1 for i, key in enumerate(v) if not key.isascii() or not key.isprintable()]
        if bad:
            raise ValueError(f"key number {', '.join(map(str, bad))} has characters other than "
                             "printable ASCII, so it could never authenticate; use letters, "
                             "digits and punctuation")
        return v

    @field_validator("allowed_sizes", mode="before")
    @classmethod
    def _sizes(cls, v):
        return parse_sizes(v) if isinstance(v, str) else v

    @field_validator("num_frames", "steps", "step_cache", mode="before")
    @classmethod
    def _empty_is_unset(cls, v):
        return None if v == "" else v

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, v: str):
        parse_rate(v)
        return v

    @property
    def rate(self) -> tuple[int, float] | None:
        return parse_rate(self.rate_limit)

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'svd.db').resolve()}"

    @property
    def webhook_allow_list(self) -> list[str]:
        return [p.strip() for p in self.webhook_allow.split(",") if p.strip()]

    @property
    def any_size(self) -> bool:
        return self.allowed_sizes == ()

    def size_allowed(self, width: int, height: int, exact: bool = False) -> bool:
        """With `exact` False, the size turned a quarter (EXIF orientation) counts too."""
        if self.any_size:
            return (width % 64 == 0 and height % 64 == 0 and width >= 64 and height >= 64
                    and width * height <= self.max_pixels)
        return (width, height) in self.allowed_sizes or (
            not exact and (height, width) in self.allowed_sizes)

    @property
    def uses_postgres(self) -> bool:
        return self.resolved_database_url.startswith(("postgresql", "postgres:"))

    @property
    def results_in_database(self) -> bool:
        return self.result_store == "database" or (self.result_store == "auto" and self.uses_postgres)

    def generator_options(self) -> dict:
        """Keyword arguments of inference.loader.load_generator from these settings."""
        return dict(num_frames=self.num_frames, steps=self.steps, cpu_threads=self.cpu_threads,
                    memory_profile=self.memory_profile, mode=self.mode, compile=self.compile,
                    step_cache=self.step_cache, fp8=self.fp8, cache_dir=self.compile_cache_dir,
                    warmup=self.warmup, warmup_sizes=self.allowed_sizes or ((1024, 576),),
                    max_batch=self.max_batch, scheduler=self.scheduler)

    @property
    def compile_cache_dir(self) -> Path:
        """torch.compile's artefacts, kept so a restart skips most of the compiling."""
        return self.data_dir / "compile-cache"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_stored_bytes_per_key(self) -> int:
        return int(self.max_stored_mb_per_key * 1024 * 1024)

    @property
    def result_ttl_s(self) -> float:
        return self.result_ttl_hours * 3600.0


# Settings whose values are never echoed back, not even in an error.
SECRET_SETTINGS = {"SVD_API_KEYS", "SVD_API_KEY", "SVD_WEBHOOK_SECRET", "SVD_DATABASE_URL"}


def load_settings(**overrides) -> Settings | None:
    """Settings from the environment, or None after saying on stderr what is wrong."""
    from pydantic import ValidationError
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        for e in exc.errors():
            name = "SVD_" + "_".join(str(p) for p in e["loc"]).upper()
            got = "" if name in SECRET_SETTINGS else f" (got {e.get('input')!r})"
            print(f"error: {name}: {e['msg']}{got}", file=sys.stderr)
        return None


def private_dir(path: Path) -> Path:
    """mkdir -p, readable by this user only (700) for every folder it creates; a folder that
    already exists keeps the mode its owner gave it."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for p in missing:
        os.chmod(p, 0o700)
    return path
