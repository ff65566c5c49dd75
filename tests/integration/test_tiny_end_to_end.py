"""The real thing through HTTP: `svd-server serve` as a process, the real diffusers pipeline
(tiny random weights), a real MP4 decoded and checked."""
from __future__ import annotations

import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from tests.helpers import ROOT, ServerProcess, decode_frames, inspect_mp4, png_bytes

pytestmark = pytest.mark.slow
KEY = "e2e-key"


def cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("e2e") / "data"
    # `auto` on a machine without CUDA must fall back to the tiny model, loudly.
    env = {"SVD_MODEL": "tiny" if cuda_available() else "auto", "SVD_API_KEYS": KEY,
           "SVD_ALLOWED_SIZES": "64x64,96x64", "SVD_NUM_FRAMES": "5", "SVD_STEPS": "3"}
    srv = ServerProcess(data, env).start()
    yield srv
    srv.stop()


def generate(server, image: bytes, **data) -> tuple[str, httpx.Response]:
    headers = {"authorization": f"Bearer {KEY}"}
    r = httpx.post(server.url + "/v2beta/image-to-video", headers=headers,
                   files={"image": ("in.png", image, "image/png")}, data=data, timeout=30)
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    deadline = time.time() + 120
    while True:
        res = httpx.get(f"{server.url}/v2beta/image-to-video/result/{job_id}",
                        headers={**headers, "accept": "video/*"}, timeout=30)
        if res.status_code != 202:
            return job_id, res
        assert time.time() < deadline
        time.sleep(0.1)


def test_generates_a_browser_playable_mp4(server):
    _, res = generate(server, png_bytes(96, 64), seed="11")
    assert res.status_code == 200 and res.headers["content-type"] == "video/mp4"
    assert res.headers["finish-reason"] == "SUCCESS" and res.headers["seed"] == "11"
    info = inspect_mp4(res.content)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    assert (info.frames, info.width, info.height) == (5, 96, 64)    # SVD_NUM_FRAMES wins
    assert round(info.fps) == 7
    assert info.fast_start, info.top_level_boxes


def test_same_seed_same_video_other_seed_other_video(server):
    image = png_bytes(64, 64, color=(10, 120, 200))
    a = decode_frames(generate(server, image, seed="5")[1].content)
    b = decode_frames(generate(server, image, seed="5")[1].content)
    c = decode_frames(generate(server, image, seed="6")[1].content)
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1


def test_fallback_is_never_silent(server):
    if cuda_available():
        pytest.skip("CUDA present: auto does not fall back here")
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200
    assert "RANDOM-WEIGHT" in ready.json()["warning"] and "tiny" in ready.json()["model"]
    assert "fallback" in ready.headers["x-svd-model"]
    assert "RANDOM-WEIGHT" in server.log()


def test_stability_python_sample_flow_works_unchanged(server, tmp_path):
    image = tmp_path / "in.png"
    image.write_bytes(png_bytes(64, 64))
    out = tmp_path / "out.mp4"
    run = subprocess.run(
        [sys.executable, "scripts/smoke_client.py", str(image), "-o", str(out),
         "--base-url", server.url, "--api-key", KEY, "--interval", "0.2", "--timeout", "120"],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert inspect_mp4(out.read_bytes()).frames == 5
