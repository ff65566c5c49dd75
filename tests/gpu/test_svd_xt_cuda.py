"""SVD-XT on a real NVIDIA GPU, through the server: fp16, the real loading code, a full-size
1024x576 video of 25 frames in 25 steps. Random weights with SVD-XT's exact architecture
(no download needed; compute and memory are those of the real checkpoint). Skipped without
CUDA; run on a GPU box with `pytest tests/gpu -s`."""
from __future__ import annotations

import io
import json
import os
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers import ServerProcess, inspect_mp4

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.timeout(560),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]
W, H, FRAMES, STEPS = 1024, 576, 25, 25


def build_svd_xt_random():
    from inference.random_arch import build_svd_xt_random as build
    return build("cuda", torch.float16)


def test_svd_xt_fp16_through_the_server(tmp_path):
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    pipe = build_svd_xt_random()
    model_dir = tmp_path / "svd-xt-random"
    t = time.perf_counter()
    pipe.save_pretrained(model_dir, variant="fp16")
    report["save_s"] = round(time.perf_counter() - t, 1)

    # Plain diffusers on the same card, for reference: decode_chunk_size 8, guidance 1 → 3.
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8))
    pipe.set_progress_bar_config(disable=True)
    run = lambda: pipe(image, height=H, width=W, num_frames=FRAMES, num_inference_steps=STEPS,
                       decode_chunk_size=8, min_guidance_scale=1.0, max_guidance_scale=3.0,
                       generator=torch.Generator("cpu").manual_seed(1), output_type="np")
    run()                                                      # warm-up
    torch.cuda.synchronize()
    t = time.perf_counter()
    run()
    torch.cuda.synchronize()
    report["plain_diffusers_s"] = round(time.perf_counter() - t, 2)
    del pipe
    torch.cuda.empty_cache()

    data = tmp_path / "data"
    srv = ServerProcess(data, {"SVD_MODEL": str(model_dir), "SVD_API_KEYS": "gpu-key",
                               "SVD_ALLOWED_SIZES": f"{W}x{H}"})
    t = time.perf_counter()
    srv.start(timeout=300)
    report["server_ready_s"] = round(time.perf_counter() - t, 1)
    try:
        ready = httpx.get(srv.url + "/readyz").json()
        report["model"] = ready["model"]
        assert "float16, cuda" in ready["model"] and "warning" not in ready
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        headers = {"authorization": "Bearer gpu-key"}
        times = []
        for seed in ("7", "8"):                                # the first one warms up
            t = time.perf_counter()
            r = httpx.post(srv.url + "/v2beta/image-to-video", headers=headers,
                           files={"image": ("in.png", buf.getvalue())},
                           data={"seed": seed, "cfg_scale": "3.0"}, timeout=60)
            assert r.status_code == 200, r.text
            job_id = r.json()["id"]
            while (res := httpx.get(f"{srv.url}/v2beta/image-to-video/result/{job_id}",
                                    headers={**headers, "accept": "video/*"}, timeout=60)).status_code == 202:
                time.sleep(0.1)
            times.append(time.perf_counter() - t)
            assert res.status_code == 200, res.text
            assert res.headers["seed"] == seed and res.headers["x-svd-model"].endswith("svd-xt-random")
            info = inspect_mp4(res.content)
            assert (info.codec, info.pix_fmt, info.frames, info.width, info.height) == (
                "h264", "yuv420p", FRAMES, W, H)
            assert info.fast_start
        report["server_first_video_s"] = round(times[0], 2)
        report["server_video_s"] = round(times[1], 2)
        report["server_vs_plain"] = round(times[1] / report["plain_diffusers_s"], 3)
        report["mp4_bytes"] = len(res.content)
        log = srv.log()
        report["worker_log"] = [line for line in log.splitlines() if "succeeded in" in line][-1:]
    finally:
        srv.stop()
    print(json.dumps(report, indent=1))
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_report.json"), "w") as fh:
            json.dump(report, fh, indent=1)
