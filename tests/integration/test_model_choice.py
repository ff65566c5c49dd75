"""SVD_MODEL: what `auto` decides, loading a real diffusers directory, and failing loudly."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from app.child_process import free_port
from inference.base import GenerationRequest
from inference.loader import ModelChoice, ModelUnavailable, load_generator, resolve_model
from tests.helpers import ROOT, ServerProcess

pytestmark = pytest.mark.slow


def test_auto_without_cuda_falls_back_to_tiny_and_says_so():
    choice = resolve_model("auto", cuda=False)
    assert choice.kind == "tiny" and "RANDOM-WEIGHT" in choice.fallback_reason
    assert "fallback" in choice.label
    assert resolve_model("tiny", cuda=False).fallback_reason is None


def test_auto_with_cuda_but_no_weights_refuses_with_instructions(monkeypatch):
    monkeypatch.setattr("inference.loader._in_hf_cache", lambda repo: False)
    with pytest.raises(ModelUnavailable) as err:
        resolve_model("auto", cuda=True)
    text = str(err.value)
    assert "HF_TOKEN" in text and "download_weights.py" in text and "SVD_MODEL=tiny" in text


def test_auto_with_cuda_and_cached_weights_picks_svd_xt(monkeypatch):
    monkeypatch.setattr("inference.loader._in_hf_cache", lambda repo: True)
    choice = resolve_model("auto", cuda=True)
    assert (choice.kind, choice.source, choice.device) == (
        "svd", "stabilityai/stable-video-diffusion-img2vid-xt", "cuda")


@pytest.mark.parametrize("spec", ["/no/such/dir", "./missing", "someone/not-cached-model",
                                  "not a model spec"])
def test_explicit_models_that_cannot_load_are_errors(spec):
    with pytest.raises(ModelUnavailable):
        resolve_model(spec, cuda=False)


def test_a_local_diffusers_directory_loads_through_from_pretrained(tmp_path):
    from inference.tiny import build_tiny_pipeline
    build_tiny_pipeline().save_pretrained(tmp_path / "svd")
    choice = resolve_model(str(tmp_path / "svd"), cuda=False)
    assert choice.kind == "svd"
    loaded = load_generator(choice, num_frames=3, steps=2)
    builtin = load_generator(ModelChoice("tiny", None, "cpu"), num_frames=3, steps=2)
    request = GenerationRequest(Image.new("RGB", (64, 64), (30, 60, 90)), seed=9)
    a, b = loaded.generate(request), builtin.generate(request)
    assert a.shape == (3, 64, 64, 3) and a.dtype == np.uint8
    # Same weights; the scheduler's saved config round-trips with tiny float differences.
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 4 and diff.mean() < 0.5
    assert str(tmp_path / "svd") in loaded.description


def run_serve(tmp_path, model: str) -> subprocess.CompletedProcess:
    env = {"SVD_MODEL": model, "SVD_DATA_DIR": str(tmp_path / "data"), "SVD_API_KEYS": "k",
           "SVD_PORT": str(free_port()), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_serve_stops_with_a_clear_message_when_the_model_is_missing(tmp_path):
    out = run_serve(tmp_path, str(tmp_path / "nowhere"))
    assert out.returncode == 2
    assert "cannot start" in out.stderr and "model_index.json" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_settings_are_reported_without_a_traceback(tmp_path):
    env = {"SVD_PORT": "not-a-port", "SVD_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "SVD_PORT" in out.stderr and "Traceback" not in out.stderr


def test_serve_stops_when_weights_fail_to_load_after_start(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "StableVideoDiffusionPipeline"}))
    srv = ServerProcess(tmp_path / "data", {"SVD_MODEL": str(broken), "SVD_API_KEYS": "k"})
    with pytest.raises(RuntimeError, match="exited with 1"):
        srv.start(timeout=120)
    assert "could not load" in srv.log()
