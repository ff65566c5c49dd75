"""Presets (SVD_MODEL=animatelcm-svd-xt, svd, svd-xt-1-1), a UNet file over the base model
(SVD_UNET) and the consistency sampler (SVD_SCHEDULER) through the real server."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from safetensors.torch import save_file

from inference.loader import ModelUnavailable, resolve_model
from inference.presets import PRESETS
from tests.helpers import ROOT, ServerProcess, inspect_mp4, png_bytes

pytestmark = pytest.mark.slow
KEY = "preset-key"
ANIMATELCM_REPO = "models--wangfuyun--AnimateLCM-SVD-xt"


def fake_hf_cache(root, repos: dict[str, list[str]]):
    """A Hugging Face cache (HF_HUB_CACHE layout) holding these files of these repos, empty."""
    for repo, files in repos.items():
        snapshot = root / repo / "snapshots" / "0123abcd"
        for name in files:
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / name).write_bytes(b"")
        (root / repo / "refs").mkdir(parents=True, exist_ok=True)
        (root / repo / "refs" / "main").write_text("0123abcd")
    return root


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """Every preset's base model cached, and AnimateLCM's UNet file (1.1 only)."""
    bases = {"models--" + p.repo.replace("/", "--"): ["model_index.json"] for p in PRESETS.values()}
    root = fake_hf_cache(tmp_path / "hub", {
        **bases, ANIMATELCM_REPO: ["AnimateLCM-SVD-xt-1.1.safetensors"]})
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(root))
    return root


def test_presets_resolve_as_documented(hub):
    lcm = resolve_model("animatelcm-svd-xt", cuda=False)
    assert (lcm.kind, lcm.source) == ("svd", "stabilityai/stable-video-diffusion-img2vid-xt")
    assert (lcm.preset.steps, lcm.preset.frames, lcm.preset.scheduler) == (4, 25, "animatelcm")
    assert lcm.unet.endswith("AnimateLCM-SVD-xt-1.1.safetensors") and os.path.isfile(lcm.unet)
    assert lcm.label == "animatelcm-svd-xt"
    svd = resolve_model("svd", cuda=False)
    assert (svd.source, svd.preset.frames, svd.unet) == (
        "stabilityai/stable-video-diffusion-img2vid", 14, None)
    xt11 = resolve_model("svd-xt-1-1", cuda=False)
    assert xt11.source == "stabilityai/stable-video-diffusion-img2vid-xt-1-1"
    # A UNet of one's own wins over the preset's, and is named in the label.
    own = hub / "mine.safetensors"
    own.write_bytes(b"")
    mine = resolve_model("animatelcm-svd-xt", cuda=False, unet=str(own))
    assert mine.unet == str(own) and mine.label == "animatelcm-svd-xt; unet=mine.safetensors"


def test_a_preset_without_its_unet_or_base_says_how_to_get_them(tmp_path, monkeypatch):
    root = fake_hf_cache(tmp_path / "hub", {
        "models--stabilityai--stable-video-diffusion-img2vid-xt": ["model_index.json"]})
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(root))
    with pytest.raises(ModelUnavailable) as err:
        resolve_model("animatelcm-svd-xt", cuda=False)
    assert "download_weights.py --preset animatelcm-svd-xt" in str(err.value)
    assert "SVD_UNET" in str(err.value)
    with pytest.raises(ModelUnavailable, match="--preset svd`"):
        resolve_model("svd", cuda=False)
    with pytest.raises(ModelUnavailable, match="no such file"):
        resolve_model("tiny", cuda=False, unet=str(tmp_path / "missing.safetensors"))


def test_doctor_shows_the_preset(hub, tmp_path):
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "SVD_MODEL": "animatelcm-svd-xt",
           "SVD_DATA_DIR": str(tmp_path / "data"), "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-m", "app.cli", "doctor"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    line = next(x for x in out.stdout.splitlines() if "model" in x and "SVD_MODEL" in x)
    assert "preset animatelcm-svd-xt" in line and "animatelcm sampler" in line, out.stdout
    assert "AnimateLCM-SVD-xt-1.1.safetensors" in line and "4 steps" in line


def tiny_unet_file(path, broken: str | None = None):
    """The tiny model's UNet with other weights (each tensor scaled), as one .safetensors;
    `broken="key"` renames a tensor."""
    from inference.tiny import build_tiny_pipeline
    state = {k: (v * 0.9).contiguous() for k, v in build_tiny_pipeline().unet.state_dict().items()}
    if broken == "key":
        state["conv_in.weights"] = state.pop("conv_in.weight")
    save_file(state, str(path))
    return path


def generate(url: str, seed: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {KEY}"}
    r = httpx.post(url + "/v2beta/image-to-video", headers=headers, data={"seed": seed},
                   files={"image": ("in.png", png_bytes(64, 64), "image/png")}, timeout=30)
    assert r.status_code == 200, r.text
    deadline = time.time() + 120
    while (res := httpx.get(f"{url}/v2beta/image-to-video/result/{r.json()['id']}",
                            headers={**headers, "accept": "video/*"}, timeout=30)).status_code == 202:
        assert time.time() < deadline
        time.sleep(0.1)
    return res


def test_a_unet_file_and_the_consistency_sampler_through_the_server(tmp_path):
    unet = tiny_unet_file(tmp_path / "few-step-unet.safetensors")
    srv = ServerProcess(tmp_path / "data", {
        "SVD_MODEL": "tiny", "SVD_UNET": str(unet), "SVD_SCHEDULER": "animatelcm",
        "SVD_API_KEYS": KEY, "SVD_ALLOWED_SIZES": "64x64", "SVD_NUM_FRAMES": "3",
        "SVD_STEPS": "4"}).start()
    try:
        ready = httpx.get(srv.url + "/readyz").json()
        assert "few-step-unet.safetensors" in ready["model"]
        assert "consistency sampler" in ready["model"]
        first, again = generate(srv.url, "5"), generate(srv.url, "5")
        assert first.status_code == 200
        assert first.headers["x-svd-model"] == "tiny-random; unet=few-step-unet.safetensors"
        assert inspect_mp4(first.content).frames == 3
        assert first.content == again.content             # the same seed, the same video
        assert generate(srv.url, "6").content != first.content
    finally:
        srv.stop()


def test_a_unet_file_that_does_not_fit_stops_the_server_with_the_keys(tmp_path):
    # A wrong shape is refused the same way (tests/unit/test_unet_file.py, and on SVD-XT's
    # blocks in tests/unit/test_svd_xt_paths.py).
    broken, named = "key", "conv_in.weight"
    unet = tiny_unet_file(tmp_path / "wrong.safetensors", broken)
    srv = ServerProcess(tmp_path / "data", {"SVD_MODEL": "tiny", "SVD_UNET": str(unet),
                                            "SVD_API_KEYS": KEY})
    with pytest.raises(RuntimeError, match="exited with 1"):
        srv.start(timeout=120)
    log = srv.log()
    assert "wrong.safetensors" in log and named in log and "Traceback" not in log
