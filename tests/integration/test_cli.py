"""`svd-server generate` (here and through a real server) and `svd-server doctor`, run as
processes the way a user runs them, on the tiny random-weight model."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from app.jobs.params import MAX_SEED
from tests.helpers import ROOT, ServerProcess, inspect_mp4, png_bytes

pytestmark = pytest.mark.slow
KEY = "cli-test-key-3f9a"
TINY = {"SVD_MODEL": "tiny", "SVD_ALLOWED_SIZES": "64x64", "SVD_NUM_FRAMES": "3", "SVD_STEPS": "2"}


def svd(*args: str, env: dict[str, str] | None = None, timeout: float = 180):
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("SVD_") and k not in ("CUDA_VISIBLE_DEVICES",)}
    run_env = {**clean, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=run_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in.png"
    path.write_bytes(png_bytes(64, 64, color=(30, 140, 90)))
    return path


def local_env(tmp_path) -> dict[str, str]:
    return {**TINY, "SVD_DATA_DIR": str(tmp_path / "data")}


def test_local_generate_writes_the_video_and_says_the_seed(tmp_path, image):
    out = tmp_path / "out.mp4"
    run = svd("generate", str(image), "-o", str(out), env=local_env(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    info = inspect_mp4(out.read_bytes())
    assert (info.codec, info.pix_fmt, info.frames, info.width, info.height) == \
        ("h264", "yuv420p", 3, 64, 64)
    seed = int(re.search(r"^seed: (\d+)$", run.stdout, re.M).group(1))
    assert 1 <= seed <= MAX_SEED                      # 0/absent: drawn at random, never 0
    assert f"saved: {out}" in run.stdout
    assert "step 2/2" in run.stderr and "encoding" in run.stderr   # progress, not a TTY here
    assert not list(tmp_path.glob(".*.part"))


def test_local_same_seed_same_bytes(tmp_path, image):
    outs = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    for out in outs:
        run = svd("generate", str(image), "-o", str(out), "--seed", "5", env=local_env(tmp_path))
        assert run.returncode == 0, run.stderr
        assert "seed: 5" in run.stdout
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_frames_and_steps_flags_override_the_settings(tmp_path, image):
    out = tmp_path / "out.mp4"
    run = svd("generate", str(image), "-o", str(out), "--frames", "4", "--steps", "1",
              env=local_env(tmp_path))
    assert run.returncode == 0, run.stderr
    assert "step 1/1" in run.stderr
    assert inspect_mp4(out.read_bytes()).frames == 4


@pytest.mark.parametrize("content, message", [
    (b"this is not an image", "must be a PNG or JPEG"),
    (png_bytes(96, 64), "dimensions 96x64 are not supported; use one of 64x64"),
])
def test_local_bad_image_fails_clearly(tmp_path, content, message):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    out = tmp_path / "out.mp4"
    run = svd("generate", str(bad), "-o", str(out), env=local_env(tmp_path))
    assert run.returncode == 1
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not out.exists()


@pytest.mark.parametrize("args", [["--seed", "-1"], ["--cfg-scale", "nan"],
                                  ["--motion-bucket-id", "256"], ["--frames", "0"]])
def test_bad_arguments_exit_2(tmp_path, image, args):
    run = svd("generate", str(image), "-o", str(tmp_path / "o.mp4"), *args, env=local_env(tmp_path))
    assert run.returncode == 2, run.stderr


def test_missing_input_or_output_dir_or_bad_setting_exit_2(tmp_path, image):
    env = local_env(tmp_path)
    run = svd("generate", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o.mp4"), env=env)
    assert run.returncode == 2 and "cannot read" in run.stderr
    run = svd("generate", str(image), "-o", str(tmp_path / "no" / "o.mp4"), env=env)
    assert run.returncode == 2 and "does not exist" in run.stderr
    run = svd("generate", str(image), "-o", str(tmp_path / "o.mp4"),
              env={**env, "SVD_MODEL": str(tmp_path / "no-model")})
    assert run.returncode == 2 and "model_index.json" in run.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("cli-server") / "data"
    srv = ServerProcess(data, {**TINY, "SVD_API_KEYS": KEY}).start()
    yield srv
    srv.stop()


def test_remote_generate_against_a_real_server(server, tmp_path, image):
    out = tmp_path / "remote.mp4"
    run = svd("generate", str(image), "-o", str(out), "--server", server.url, "--api-key", KEY,
              "--seed", "7", "--cfg-scale", "2.5", "--motion-bucket-id", "40")
    assert run.returncode == 0, run.stdout + run.stderr
    info = inspect_mp4(out.read_bytes())
    assert (info.codec, info.frames, info.width, info.height) == ("h264", 3, 64, 64)
    assert "seed: 7" in run.stdout and f"saved: {out}" in run.stdout
    assert "generation id:" in run.stderr and "uploading" in run.stderr
    assert KEY not in run.stdout + run.stderr


def test_remote_errors_are_the_servers_words(server, tmp_path, image):
    bad = tmp_path / "wide.png"
    bad.write_bytes(png_bytes(96, 64))
    env = {"SVD_BASE_URL": server.url, "SVD_API_KEY": KEY}       # the environment, not flags
    run = svd("generate", str(bad), "-o", str(tmp_path / "o.mp4"), env=env)
    assert run.returncode == 1
    assert "400" in run.stderr and "dimensions 96x64 are not supported" in run.stderr
    run = svd("generate", str(image), "-o", str(tmp_path / "o.mp4"),
              env={**env, "SVD_API_KEY": "wrong-key"})
    assert run.returncode == 1 and "401" in run.stderr
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("key_from", ["env", "file"])
def test_doctor_reports_without_leaking_keys(tmp_path, key_from):
    data = tmp_path / "data"
    env = {"SVD_DATA_DIR": str(data), "SVD_MODEL": "auto"}
    secret = f"sk-doctor-secret-{key_from}-8c1e"
    if key_from == "env":
        env["SVD_API_KEYS"] = f"{secret},other-secret-key"
    else:
        assert svd("db", "upgrade", env=env).returncode == 0
        (data / "api_key").write_text(secret + "\n")
        (data / "api_key").chmod(0o600)
    run = svd("doctor", env=env, timeout=60)
    text = run.stdout + run.stderr
    assert run.returncode in (0, 1), text
    assert (run.returncode == 1) == ("[FAIL]" in run.stdout)
    for name in ("python", "torch", "CUDA", "model", "weights", "speed", "encoder", "database",
                 "data dir", "disk", "API keys"):
        assert re.search(rf"^\[(?: OK |WARN|FAIL)\] {name}\b", run.stdout, re.M), (name, text)
    assert secret not in text and "other-secret-key" not in text
    if key_from == "file":
        assert "schema at head" in run.stdout and "(mode 0600)" in run.stdout
    else:
        assert "not created yet" in run.stdout and "2 key(s)" in run.stdout


def test_doctor_names_speed_settings_this_machine_cannot_honour(tmp_path):
    env = {"SVD_DATA_DIR": str(tmp_path / "data"), "SVD_MODEL": "tiny", "SVD_API_KEYS": "k"}
    run = svd("doctor", env={**env, "SVD_FP8": "on"}, timeout=60)
    assert run.returncode == 1
    assert re.search(r"^\[FAIL\] speed .*FP8 needs an NVIDIA GPU", run.stdout, re.M), run.stdout
    run = svd("doctor", env={**env, "SVD_COMPILE": "on", "SVD_MODE": "fast"}, timeout=60)
    assert re.search(r"^\[ OK \] speed +mode fast, compile on, step cache 3, FP8 off", run.stdout,
                     re.M), run.stdout
    assert re.search(r"^\[WARN\] compile +nothing cached in .*compile-cache", run.stdout, re.M)
