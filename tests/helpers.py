"""Shared test helpers: keys and settings, images, a real HTTP server in a thread or a
process, MP4 inspection."""
from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from app.child_process import free_port, popen_kwargs, start_server, wait_until_ready
from app.config import Settings
from app.main import create_app
from tests.fakes import FakeGenerator

ROOT = Path(__file__).resolve().parent.parent
KEY_A = "test-key-a"
KEY_B = "test-key-b"
TEST_SIZES = "64x64,96x64,1024x576,576x1024,768x768"
PG_ADMIN_URL = os.environ.get("SVD_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str):
    """A test that needs something missing is skipped on a laptop and fails in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing service fails instead of skipping)")
    pytest.skip(reason)


def png_bytes(w: int = 64, h: int = 64, mode: str = "RGB", color=(200, 40, 40)) -> bytes:
    img = Image.new(mode, (w, h), color if mode in ("RGB", "RGBA") else 128)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(w: int = 64, h: int = 64, **save_args) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **save_args)
    return buf.getvalue()


class ServerThread:
    """A real uvicorn server for an app, on a free port, in a background thread, with the
    connection limits of the app's settings (as `svd-server serve` has them)."""

    def __init__(self, app):
        from app.http_guard import uvicorn_config
        self.port = free_port()
        self.app = app
        self.server = uvicorn.Server(uvicorn_config(app, app.state.settings, host="127.0.0.1",
                                                    port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(20)


def make_settings(tmp_path, **overrides) -> Settings:
    values = dict(data_dir=tmp_path / "data", api_keys=f"{KEY_A},{KEY_B}", allowed_sizes=TEST_SIZES,
                  workers=1, sweep_interval_s=3600)
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running_server(tmp_path, generator=None, **overrides):
    generator = generator or FakeGenerator()
    settings = make_settings(tmp_path, **overrides)
    app = create_app(settings, generator_factory=lambda: generator, model_label="fake")
    with ServerThread(app) as server:
        deadline = time.time() + 10
        while httpx.get(server.url + "/readyz").status_code != 200:
            assert time.time() < deadline, "server never became ready"
            time.sleep(0.02)
        server.generator = generator
        server.settings = settings
        yield server


def wait_done(client: httpx.Client, job_id: str, timeout: float = 30, **kw) -> httpx.Response:
    deadline = time.time() + timeout
    while True:
        r = client.get(f"/v2beta/image-to-video/result/{job_id}", **kw)
        if r.status_code != 202:
            return r
        assert time.time() < deadline, "generation did not finish in time"
        time.sleep(0.05)


@dataclass
class Mp4Info:
    codec: str
    pix_fmt: str
    frames: int
    width: int
    height: int
    fps: float
    top_level_boxes: list[str]

    @property
    def fast_start(self) -> bool:
        boxes = self.top_level_boxes
        return "moov" in boxes and "mdat" in boxes and boxes.index("moov") < boxes.index("mdat")


def top_level_boxes(data: bytes) -> list[str]:
    boxes, i = [], 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        if size == 1:
            size = struct.unpack(">Q", data[i + 8:i + 16])[0]
        boxes.append(kind.decode("latin-1"))
        if size < 8:
            break
        i += size
    return boxes


def inspect_mp4(data: bytes) -> Mp4Info:
    import av
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        frames = sum(1 for _ in c.decode(video=0))
        return Mp4Info(s.codec_context.name, s.codec_context.pix_fmt, frames, s.width, s.height,
                       float(s.average_rate or 0), top_level_boxes(data))


def decode_frames(data: bytes) -> np.ndarray:
    import av
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


class ServerProcess:
    """`svd-server serve` as a real process (the way a user runs it)."""

    def __init__(self, data_dir: Path, env: dict[str, str], port: int | None = None):
        self.port = port or free_port()
        self.data_dir = data_dir
        self.env = {**os.environ, "SVD_DATA_DIR": str(data_dir), "SVD_PORT": str(self.port),
                    "PYTHONUNBUFFERED": "1", **env}
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout: float = 120) -> "ServerProcess":
        """Start it and wait for /readyz (/healthz with wait_ready=False); a RuntimeError
        (ServerNotReady) with the log's tail if it exits first or does not answer in time."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = start_server(self.env, ROOT, self.log_path)
        path = "/readyz" if wait_ready else "/healthz"
        wait_until_ready(self.proc, self.url + path, self.log_path, timeout)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def sqlite_job_store(path: Path):
    """A migrated SQLite job store in the file `path`."""
    from app.jobs import migrate
    from app.jobs.sql import SqlJobStore
    from app.jobs.tables import make_engine
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    return SqlJobStore(engine)


def run_bench(tmp_path: Path, command: str, *args: str, timeout: float = 300):
    """`scripts/bench.py COMMAND --quick ARGS --json FILE` as a process; fails the test on a
    non-zero exit (with the output's tails). Returns the process and the JSON it wrote."""
    import json
    out = tmp_path / f"{command}.json"
    proc = subprocess.run([sys.executable, "scripts/bench.py", command, "--quick", *args,
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **popen_kwargs())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


BROWSER_DIR = ROOT / "tests" / "browser"


def browser_node() -> str:
    """The `node` that runs the browser specs, once Chromium and playwright-core are there;
    else skipped (failed under CI=true) with what is missing."""
    import shutil
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        skip_or_fail("Node.js and npm are needed for the browser test")
    chromium = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
    if not chromium.exists():
        skip_or_fail(f"no Chromium at {chromium} (apt-get install chromium)")
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        skip_or_fail("playwright-core is not installed (npm ci in tests/browser)")
    return node


def browser_outcome(proc, screenshot: Path, artifact: Path, server) -> None:
    """After a browser spec ran: keep its screenshot as an artifact, print its output, and
    fail the test with that output and the server log's end if it failed."""
    import shutil

    import pytest
    if screenshot.exists():
        artifact.parent.mkdir(exist_ok=True)
        shutil.copyfile(screenshot, artifact)
    print(proc.stdout)
    if proc.returncode != 0:
        pytest.fail(f"the browser test failed (exit {proc.returncode}); screenshot: {artifact}\n"
                    f"{proc.stdout}\n{proc.stderr}\n--- server log (end) ---\n{server.log()[-4000:]}",
                    pytrace=False)


@contextmanager
def fresh_postgres_database(prefix: str = "svd_test"):
    """The URL of a new, empty PostgreSQL database (on PG_ADMIN_URL's server), dropped at the
    end; skipped (failed under CI=true) when no PostgreSQL answers."""
    import uuid

    from sqlalchemy import create_engine, text

    from app.jobs.tables import sqlalchemy_url
    admin = create_engine(sqlalchemy_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        skip_or_fail(f"no PostgreSQL at {PG_ADMIN_URL}: {exc.__class__.__name__}")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
