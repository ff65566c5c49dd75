"""The playground at `/`, end to end in headless Chromium: `svd-server serve` as a process with
the tiny pipeline, then tests/browser/playground.spec.mjs (playwright-core) drives the page:
images fitted in the browser to an allowed size (crop, pad, EXIF orientation), the model and its
defaults, progress and ETA, the download link, and "copy as curl", whose text is then run here
with a real curl against the same server.

Needs Debian's chromium (/usr/bin/chromium), Node.js with npm, and `npm ci` run in this folder;
.ci/run installs them. Without them the test is skipped here and fails under CI=true."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.helpers import ServerProcess, browser_node, browser_outcome, skip_or_fail

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]   # server start + browser run

HERE = Path(__file__).resolve().parent
SPEC = HERE / "playground.spec.mjs"
ARTIFACT = HERE / "artifacts" / "playground.png"
KEY = "browser-test-key"
SIZE = 64
API = "/v2beta/image-to-video"


def image_64() -> bytes:
    """A 64x64 PNG with a gradient, so that the preview shows something."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    rgb = np.stack([x * 4, y * 4, np.full_like(x, 160)], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def image_odd() -> bytes:
    """A 100x70 PNG with no black pixel: the page fits it to 128x64, and padding shows as black."""
    y, x = np.mgrid[0:70, 0:100]
    rgb = np.stack([80 + x * 1.7, 60 + y * 2.5, np.full_like(x, 200)], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def image_exif_rotated() -> bytes:
    """A JPEG stored 100x50, left half red and right half blue, with EXIF orientation 6 (turn a
    quarter clockwise): shown 50x100 with red above blue, as the server decodes it too."""
    img = Image.new("RGB", (100, 50), (255, 0, 0))
    img.paste((0, 0, 255), (50, 0, 100, 50))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif)
    data = buf.getvalue()
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert shown.size == (50, 100) and shown.getpixel((25, 10))[0] > 200, "test image: orientation"
    return data


def run_curl(bash: str, text: str, workdir: Path, base_url: str) -> str:
    """Runs the page's "copy as curl" text in a shell, in the folder holding the image it names,
    with KEY in the environment; returns the id it answers, once that video is there."""
    proc = subprocess.run([bash, "-c", text], cwd=workdir, env={**os.environ, "KEY": KEY},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (f"curl failed (exit {proc.returncode}):\n{text}\n"
                                  f"{proc.stdout}\n{proc.stderr}")
    job_id = json.loads(proc.stdout)["id"]
    assert len(job_id) == 64, proc.stdout
    deadline = time.monotonic() + 60
    while True:      # the generation it started finishes (and is not left running at stop)
        req = urllib.request.Request(f"{base_url}{API}/result/{job_id}",
                                     headers={"authorization": f"Bearer {KEY}",
                                              "accept": "video/*"})
        with urllib.request.urlopen(req, timeout=10) as res:
            if res.status == 200:
                assert res.read(12)[4:8] == b"ftyp"
                return job_id
        assert time.monotonic() < deadline, "the generation curl started did not finish in 60 s"
        time.sleep(0.3)


def test_playground_generates_and_plays_a_video(tmp_path):
    node = browser_node()
    bash = shutil.which("bash")
    if shutil.which("curl") is None or bash is None:
        skip_or_fail("curl and bash are needed to run the page's \"copy as curl\" text")
    image = tmp_path / "in-64x64.png"
    image.write_bytes(image_64())
    odd = tmp_path / "odd-100x70.png"
    odd.write_bytes(image_odd())
    exif = tmp_path / "exif-6.jpg"
    exif.write_bytes(image_exif_rotated())
    work = tmp_path / "work"          # the spec leaves curl.txt and the fitted image here
    work.mkdir()
    screenshot = tmp_path / "playground.png"
    # 128x64: the allowed size nearest in aspect ratio to 100x70, 64x64 to 50x100 (small: fast).
    env = {"SVD_MODEL": "tiny", "SVD_API_KEYS": KEY, "SVD_ALLOWED_SIZES": "64x64,128x64",
           "SVD_NUM_FRAMES": "4", "SVD_STEPS": "2"}
    server = ServerProcess(tmp_path / "data", env).start()
    curl_error = job_id = None
    try:
        run_env = {**os.environ, "PLAYGROUND_URL": server.url, "PLAYGROUND_KEY": KEY,
                   "PLAYGROUND_IMAGE": str(image), "PLAYGROUND_ODD_IMAGE": str(odd),
                   "PLAYGROUND_EXIF_IMAGE": str(exif), "PLAYGROUND_WORK": str(work),
                   "PLAYGROUND_SCREENSHOT": str(screenshot),
                   "PLAYGROUND_TIMEOUT_MS": "150000"}
        try:
            proc = subprocess.run([node, str(SPEC)], cwd=HERE, env=run_env, capture_output=True,
                                  text=True, timeout=240)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"the browser test ran over 240 s:\n{exc.stdout or ''}\n{exc.stderr or ''}")
        if proc.returncode == 0:
            text = (work / "curl.txt").read_text()
            try:
                job_id = run_curl(bash, text, work, server.url)
                print(f"copy as curl: started and finished {job_id}")
            except (AssertionError, OSError, ValueError, KeyError,
                    subprocess.SubprocessError) as exc:
                curl_error = f"running the \"copy as curl\" text: {exc!r}"
    finally:
        server.stop()
    browser_outcome(proc, screenshot, ARTIFACT, server)
    log = server.log()
    assert curl_error is None, f"{curl_error}\n--- server log (end) ---\n{log[-4000:]}"
    # The image curl sent is the fitted one, at the allowed size.
    assert f"job={job_id} event=queued size=128x64" in log, log[-4000:]
    assert screenshot.stat().st_size > 0
