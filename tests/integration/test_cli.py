"""`svd-server generate` (here and through a real server, with --fit) and `svd-server
doctor`, run as processes the way a user runs them, on the tiny random-weight model.
Several images at once: test_cli_batch.py."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from app.cli.fit import fit_image, target_size
from app.config import Settings
from app.jobs.params import MAX_SEED
from tests.helpers import ROOT, ServerProcess, inspect_mp4, png_bytes

pytestmark = pytest.mark.slow
KEY = "cli-test-key-3f9a"
TINY = {"SVD_MODEL": "tiny", "SVD_ALLOWED_SIZES": "64x64,128x64", "SVD_NUM_FRAMES": "3",
        "SVD_STEPS": "2"}


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


@pytest.mark.parametrize("content, fit, message", [
    (b"this is not an image", "crop", "bad.png: image must be a PNG or JPEG"),
    (png_bytes(96, 64), "none", "bad.png: image dimensions 96x64 are not supported; use one of "
                                "64x64, 128x64"),
])
def test_local_bad_image_fails_clearly(tmp_path, content, fit, message):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    out = tmp_path / "out.mp4"
    run = svd("generate", str(bad), "-o", str(out), "--fit", fit, env=local_env(tmp_path))
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


# -o's suffix names the container: .mp4 (or none) H.264, .webm VP9, .gif an animated GIF.

def container(path) -> tuple[str, str, int]:
    """(container format name, video codec, decoded frames) of the file at `path`."""
    import av
    with av.open(str(path)) as c:
        return c.format.name, c.streams.video[0].codec_context.name, \
            sum(1 for _ in c.decode(video=0))


def test_local_webm_and_gif_follow_the_output_suffix(tmp_path, image):
    webm, gif = tmp_path / "clip.webm", tmp_path / "clip.GIF"      # the suffix in any case
    for out in (webm, gif):
        run = svd("generate", str(image), "-o", str(out), "--seed", "3", env=local_env(tmp_path))
        assert run.returncode == 0, run.stdout + run.stderr
        assert f"saved: {out}" in run.stdout
    name, codec, frames = container(webm)
    assert ("webm" in name or "matroska" in name) and codec == "vp9" and frames == 3, name
    assert webm.read_bytes()[:4] == b"\x1a\x45\xdf\xa3"            # EBML, not an MP4 box
    assert gif.read_bytes()[:6] in (b"GIF89a", b"GIF87a")
    assert Image.open(gif).n_frames == 3
    assert not list(tmp_path.glob(".*.part"))


def test_unknown_output_suffix_exits_2_and_writes_nothing(tmp_path, image):
    out = tmp_path / "clip.avi"
    run = svd("generate", str(image), "-o", str(out), env=local_env(tmp_path))
    assert run.returncode == 2, run.stdout + run.stderr
    assert ".avi" in run.stderr and all(s in run.stderr for s in (".mp4", ".webm", ".gif"))
    assert "Traceback" not in run.stderr and "model:" not in run.stderr     # refused at once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


# --fit: an image of another size is scaled to the allowed size nearest in aspect ratio.
# 100x70 (aspect 1.43) is nearer 128x64 (2.0) than 64x64 (1.0) in log ratio.

def test_fit_brings_an_odd_size_to_the_nearest_allowed_one(tmp_path):
    # `pad` through a process: test_remote_generate_fits_the_image_before_sending; its pixels:
    # test_fit_pads_with_black_and_crops_to_the_edges.
    fit, done = "crop", "cropped"
    odd = tmp_path / "odd.png"
    odd.write_bytes(png_bytes(100, 70, color=(200, 180, 60)))
    out = tmp_path / "out.mp4"
    run = svd("generate", str(odd), "-o", str(out), "--fit", fit, env=local_env(tmp_path))
    assert run.returncode == 0, run.stderr
    info = inspect_mp4(out.read_bytes())
    assert (info.frames, info.width, info.height) == (3, 128, 64)
    assert f"{odd}: 100x70 {done} to 128x64 (SVD_ALLOWED_SIZES)\n" in run.stderr
    assert f"saved: {out}" in run.stdout


def exif_rotated_jpeg(stored_w: int, stored_h: int) -> bytes:
    """A JPEG stored `stored_w`x`stored_h` whose EXIF orientation 6 turns it a quarter."""
    img = Image.new("RGB", (stored_w, stored_h), (90, 30, 200))
    exif = img.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def test_fit_applies_the_exif_orientation_first(tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(exif_rotated_jpeg(70, 100))      # shown 100x70: fits 128x64, not 64x64
    out = tmp_path / "out.mp4"
    run = svd("generate", str(photo), "-o", str(out), env=local_env(tmp_path))
    assert run.returncode == 0, run.stderr
    info = inspect_mp4(out.read_bytes())
    assert (info.width, info.height) == (128, 64)
    assert (f"{photo}: 100x70 (turned by its EXIF orientation) cropped to 128x64 "
            "(SVD_ALLOWED_SIZES)") in run.stderr


def test_fit_none_refuses_as_the_server_does(tmp_path):
    odd = tmp_path / "odd.png"
    odd.write_bytes(png_bytes(100, 70))
    out = tmp_path / "out.mp4"
    run = svd("generate", str(odd), "-o", str(out), "--fit", "none", env=local_env(tmp_path))
    assert run.returncode == 1
    assert (f"error: {odd}: image dimensions 100x70 are not supported; use one of 64x64, "
            "128x64") in run.stderr
    assert "cropped" not in run.stderr and not out.exists()
    run = svd("generate", str(odd), "-o", str(out), "--fit", "stretch", env=local_env(tmp_path))
    assert run.returncode == 2 and "invalid choice" in run.stderr


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def test_fit_pads_with_black_and_crops_to_the_edges():
    """The pixels the CLI sends or uses (the same function does both), in this process."""
    settings = Settings(allowed_sizes="64x64,128x64")
    source = png_bytes(100, 70, color=(200, 180, 60))
    padded, note = fit_image(source, settings, "pad", "x.png")
    assert note == "x.png: 100x70 padded to 128x64 (SVD_ALLOWED_SIZES)"
    px = pixels(padded)
    assert px.shape == (64, 128, 3)                    # scaled to 91x64, 18-19 px each side
    assert (px[:, :17] == 0).all() and (px[:, -17:] == 0).all()
    assert (abs(px[:, 24:104] - (200, 180, 60)) <= 2).all()
    cropped, note = fit_image(source, settings, "crop", "x.png")
    assert note == "x.png: 100x70 cropped to 128x64 (SVD_ALLOWED_SIZES)"
    px = pixels(cropped)
    assert px.shape == (64, 128, 3)
    assert (abs(px - (200, 180, 60)) <= 2).all()       # no border anywhere: edge to edge
    allowed = png_bytes(128, 64)
    assert fit_image(allowed, settings, "crop") == (allowed, None)     # untouched, no line
    assert fit_image(source, settings, "none") == (source, None)


@pytest.mark.parametrize("size, max_pixels, expected", [
    ((100, 70), 1024 * 1024, (128, 64)),
    ((1200, 900), 1024 * 1024, (1152, 896)),           # scaled down into the pixel budget
    ((4000, 3000), 1024 * 576, (832, 640)),           # 4:3 nearer 1.3 than 1.4
    ((30, 500), 1024 * 1024, (64, 512)),
    ((20, 20), 64 * 64, (64, 64)),
])
def test_fit_target_with_any_size(size, max_pixels, expected):
    settings = Settings(allowed_sizes="any", max_pixels=max_pixels)
    got = target_size(*size, settings)
    assert got == expected
    assert settings.size_allowed(*got, exact=True)


def test_fit_target_from_the_list_is_nearest_in_aspect_ratio():
    settings = Settings(allowed_sizes="1024x576,576x1024,768x768")
    assert target_size(1200, 900, settings) == (768, 768)
    assert target_size(1920, 1080, settings) == (1024, 576)
    assert target_size(900, 1600, settings) == (576, 1024)
    assert target_size(4000, 2000, settings) == (1024, 576)


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
    run = svd("generate", str(bad), "-o", str(tmp_path / "o.mp4"), "--fit", "none", env=env)
    assert run.returncode == 1
    assert "400" in run.stderr and "dimensions 96x64 are not supported" in run.stderr
    run = svd("generate", str(image), "-o", str(tmp_path / "o.mp4"),
              env={**env, "SVD_API_KEY": "wrong-key"})
    assert run.returncode == 1 and "401" in run.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_remote_generate_fits_the_image_before_sending(server, tmp_path):
    odd = tmp_path / "odd.png"
    odd.write_bytes(png_bytes(100, 70))
    out = tmp_path / "remote.mp4"
    run = svd("generate", str(odd), "-o", str(out), "--fit", "pad", "--server", server.url,
              "--api-key", KEY)
    assert run.returncode == 0, run.stdout + run.stderr
    info = inspect_mp4(out.read_bytes())
    assert (info.width, info.height) == (128, 64)      # the server got an exact allowed size
    assert f"{odd}: 100x70 padded to 128x64 (the server's SVD_ALLOWED_SIZES)" in run.stderr


def test_remote_webm_and_gif_follow_the_output_suffix(server, tmp_path, image):
    webm, gif = tmp_path / "remote.webm", tmp_path / "remote.gif"
    for out in (webm, gif):
        run = svd("generate", str(image), "-o", str(out), "--server", server.url,
                  "--api-key", KEY, "--seed", "11")
        assert run.returncode == 0, run.stdout + run.stderr
        assert "seed: 11" in run.stdout and f"saved: {out}" in run.stdout
    name, codec, frames = container(webm)
    assert ("webm" in name or "matroska" in name) and codec == "vp9" and frames == 3, name
    assert gif.read_bytes()[:6] in (b"GIF89a", b"GIF87a")


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".gif"])
def test_remote_asks_for_the_format_only_beyond_mp4(tmp_path, monkeypatch, suffix):
    """In this process, against a server that knows no output_format (as Stability's): an MP4
    run sends exactly the Stability form and `accept: video/*`; a .webm/.gif run sends
    output_format and polls with its media type, and the MP4 such a server answers with is
    refused, nothing written."""
    import argparse

    import httpx

    from app.cli import remote
    from app.cli.console import Bar, Failed

    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(200, json={"id": "a" * 64})
        return httpx.Response(200, content=b"\0\0\0\x20ftypisom", headers={
            "content-type": "video/mp4", "seed": "4"})

    real_client = httpx.Client
    monkeypatch.setattr(httpx, "Client", lambda **kw: real_client(
        transport=httpx.MockTransport(handler), **kw))
    args = argparse.Namespace(seed=4, cfg_scale=1.8, motion_bucket_id=127, frames=None,
                              steps=None, timeout=30.0, api_key=KEY)
    out = tmp_path / f"clip{suffix}"
    call = lambda: remote.generate_remote("http://svd.test", args, Settings(), [   # noqa: E731
        ("in.png", png_bytes(64, 64), out)], Bar())
    if suffix == ".mp4":
        assert call() == ["4"] and out.read_bytes().startswith(b"\0\0\0\x20ftyp")
    else:
        with pytest.raises(Failed, match=r"the server sent video/mp4, not (video/webm|image/gif)"):
            call()
        assert not out.exists() and not list(tmp_path.iterdir())
    post, poll = seen
    assert (b'name="output_format"' in post.content) == (suffix != ".mp4")
    if suffix != ".mp4":
        assert f'name="output_format"\r\n\r\n{suffix[1:]}\r\n'.encode() in post.content
    assert poll.headers["accept"] == {".mp4": "video/*", ".webm": "video/webm",
                                      ".gif": "image/gif"}[suffix]


DOCTOR_CHECKS = ["python", "torch", "CUDA", "model", "weights", "speed", "encoder", "database",
                 "data dir", "disk", "API keys"]


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
    checks = re.findall(r"^\[(?: OK |WARN|FAIL)\] (\S+(?: \S+)?)\s{2,}", run.stdout, re.M)
    assert checks == DOCTOR_CHECKS, text            # the machine has no GPU: no GPU line
    # The sample in docs/extensions.md shows the same checks, in order, a GPU's included.
    doc = (ROOT / "docs" / "extensions.md").read_text().split("$ svd-server doctor\n")[1]
    sample = re.findall(r"^\[ OK \] (\S+(?: \S+)?)\s{2,}", doc.split("```")[0], re.M)
    assert sample == DOCTOR_CHECKS[:3] + ["GPU"] + DOCTOR_CHECKS[3:]
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
