"""The playground at `/`, end to end in headless Chromium: `svd-server serve` as a process with
the tiny pipeline, then tests/browser/playground.spec.mjs (playwright-core) drives the page.

Needs Debian's chromium (/usr/bin/chromium), Node.js with npm, and `npm ci` run in this folder;
.ci/run installs them. Without them the test is skipped here and fails under CI=true."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ServerProcess, skip_or_fail

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]   # server start + browser run

HERE = Path(__file__).resolve().parent
SPEC = HERE / "playground.spec.mjs"
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
ARTIFACT = HERE / "artifacts" / "playground.png"
KEY = "browser-test-key"
SIZE = 64


def image_64() -> bytes:
    """A 64x64 PNG with a gradient, so that the preview shows something."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    rgb = np.stack([x * 4, y * 4, np.full_like(x, 160)], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def requirements() -> str:
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        skip_or_fail("Node.js and npm are needed for the browser test")
    if not CHROMIUM.exists():
        skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        skip_or_fail("playwright-core is not installed (npm ci in tests/browser)")
    return node


def test_playground_generates_and_plays_a_video(tmp_path):
    node = requirements()
    image = tmp_path / "in-64x64.png"
    image.write_bytes(image_64())
    screenshot = tmp_path / "playground.png"
    env = {"SVD_MODEL": "tiny", "SVD_API_KEYS": KEY, "SVD_ALLOWED_SIZES": "64x64,1024x576",
           "SVD_NUM_FRAMES": "4", "SVD_STEPS": "2"}
    server = ServerProcess(tmp_path / "data", env).start()
    try:
        run_env = {**os.environ, "PLAYGROUND_URL": server.url, "PLAYGROUND_KEY": KEY,
                   "PLAYGROUND_IMAGE": str(image), "PLAYGROUND_SCREENSHOT": str(screenshot),
                   "CHROMIUM_PATH": str(CHROMIUM), "PLAYGROUND_TIMEOUT_MS": "150000"}
        try:
            proc = subprocess.run([node, str(SPEC)], cwd=HERE, env=run_env, capture_output=True,
                                  text=True, timeout=240)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"the browser test ran over 240 s:\n{exc.stdout or ''}\n{exc.stderr or ''}")
    finally:
        server.stop()
    if screenshot.exists():
        ARTIFACT.parent.mkdir(exist_ok=True)
        shutil.copyfile(screenshot, ARTIFACT)
    print(proc.stdout)
    if proc.returncode != 0:
        pytest.fail(f"the browser test failed (exit {proc.returncode}); screenshot: {ARTIFACT}\n"
                    f"{proc.stdout}\n{proc.stderr}\n--- server log (end) ---\n{server.log()[-4000:]}",
                    pytrace=False)
    assert screenshot.stat().st_size > 0
