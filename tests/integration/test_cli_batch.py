"""`svd-server generate IMAGES... -o DIR`: one video per image, here (one model load) and
through a real server (all submitted, then polled together); a failing image is reported and
the others still finish. Run as processes, on the tiny random-weight model."""
from __future__ import annotations

import os
import re

import pytest

from tests.helpers import ServerProcess, inspect_mp4, png_bytes
from tests.integration.test_cli import (  # noqa: F401 - server: the fixture
    KEY, TINY, local_env, server, svd)

pytestmark = pytest.mark.slow


@pytest.fixture
def folder(tmp_path):
    """a.png at an allowed size, b.png random bytes, c.png 100x70 (fitted to 128x64)."""
    path = tmp_path / "shots"
    path.mkdir()
    (path / "a.png").write_bytes(png_bytes(64, 64))
    (path / "b.png").write_bytes(os.urandom(500))
    (path / "c.png").write_bytes(png_bytes(100, 70))
    (path / "notes.txt").write_text("not an image: skipped")
    return path


def check_two_of_three(run, folder, out, sizes_from="SVD_ALLOWED_SIZES") -> None:
    assert run.returncode == 1, run.stdout + run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "c.mp4"]   # no temp files left
    assert (inspect_mp4((out / "a.mp4").read_bytes()).width, inspect_mp4(
        (out / "c.mp4").read_bytes()).width) == (64, 128)
    for name in ("a", "c"):
        assert re.search(rf"^{re.escape(str(folder / name))}.png -> {re.escape(str(out / name))}"
                         r"\.mp4 \(seed \d+\)$", run.stdout, re.M), run.stdout
    assert f"{folder / 'b.png'}: error: image must be a PNG or JPEG image\n" in run.stderr
    assert f"{folder / 'c.png'}: 100x70 cropped to 128x64 ({sizes_from})" in run.stderr
    assert f"2 of 3 videos made, 1 failed (in {out})" in run.stderr
    assert "Traceback" not in run.stderr


def test_local_folder_makes_one_video_each_and_reports_the_broken_one(tmp_path, folder):
    out = tmp_path / "out"
    out.mkdir()
    run = svd("generate", str(folder), "-o", str(out), env=local_env(tmp_path))
    check_two_of_three(run, folder, out)
    assert run.stderr.count("model: ") == 1 and run.stderr.count("loading") == 1  # one load
    assert "[0/3 done] denoising" in run.stderr and "/3 done, 1 failed] " in run.stderr


def test_local_files_all_good_exit_0(tmp_path, folder):
    out = tmp_path / "out"
    out.mkdir()
    run = svd("generate", str(folder / "c.png"), str(folder / "a.png"), "-o", str(out),
              "--seed", "9", env=local_env(tmp_path))
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if " -> " in line]
    assert lines == [f"{folder / 'c.png'} -> {out / 'c.mp4'} (seed 9)",     # in the order given
                     f"{folder / 'a.png'} -> {out / 'a.mp4'} (seed 9)"]
    assert "2 of 2 videos made (in" in run.stderr


def test_one_image_into_a_folder(tmp_path, folder):
    out = tmp_path / "out"
    out.mkdir()
    run = svd("generate", str(folder / "a.png"), "-o", str(out), env=local_env(tmp_path))
    assert run.returncode == 0, run.stderr
    assert inspect_mp4((out / "a.mp4").read_bytes()).frames == 3


def test_bad_arguments_exit_2_before_anything_runs(tmp_path, folder):
    env = local_env(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.jpg").write_bytes(b"")
    cases = [
        ([str(folder / "a.png"), str(folder / "c.png"), "-o", str(tmp_path / "x.mp4")],
         f"-o {tmp_path / 'x.mp4'} is not a folder: with several images, -o names an existing "
         "folder"),
        ([str(folder), "-o", str(tmp_path / "missing")], "is not a folder"),
        ([str(folder), str(tmp_path / "other"), "-o", str(out)],
         f"{folder / 'a.png'} and {tmp_path / 'other' / 'a.jpg'} would both be saved as "
         f"{out / 'a.mp4'}"),
        ([str(tmp_path / "empty"), "-o", str(out)], "no .png, .jpg or .jpeg files in this folder"),
        ([str(folder / "a.png"), str(tmp_path / "nope.png"), "-o", str(out)],
         f"cannot read {tmp_path / 'nope.png'}: No such file or directory"),
    ]
    for args, message in cases:
        run = svd("generate", *args, env=env, timeout=60)
        assert run.returncode == 2 and message in run.stderr, (args, run.stderr)
        assert "model: " not in run.stderr
    assert not list(out.iterdir())


def test_remote_folder_submits_all_then_polls_and_reports_each(server, tmp_path, folder):
    out = tmp_path / "out"
    out.mkdir()
    seen = len(server.log())
    run = svd("generate", str(folder), "-o", str(out), "--server", server.url, "--api-key", KEY)
    check_two_of_three(run, folder, out, "the server's SVD_ALLOWED_SIZES")   # not this side's
    assert "[1/3 done, 1 failed] uploading" in run.stderr     # b.png fails before uploading
    assert KEY not in run.stdout + run.stderr
    requests = re.findall(r"method=(\w+) path=(\S+)", server.log()[seen:])   # in order
    posts = [i for i, (method, _) in enumerate(requests) if method == "POST"]
    polls = [i for i, (_, path) in enumerate(requests) if "/result/" in path]
    assert len(posts) == 2 and max(posts) < min(polls)          # all submitted, then polled
    assert len({requests[i][1] for i in polls[:2]}) == 2        # each round asks about both


def test_remote_refusal_of_one_image_leaves_the_others(server, tmp_path, folder):
    out = tmp_path / "out"
    out.mkdir()
    run = svd("generate", str(folder / "c.png"), str(folder / "a.png"), "-o", str(out),
              "--fit", "none", "--server", server.url, "--api-key", KEY)
    assert run.returncode == 1, run.stdout + run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4"]
    assert re.search(rf"^{re.escape(str(folder / 'c.png'))}: error: server answered 400: .*"
                     r"dimensions 100x70 are not supported", run.stderr, re.M), run.stderr
    assert f"{folder / 'a.png'} -> {out / 'a.mp4'} (seed " in run.stdout


def test_remote_full_queue_only_delays_the_rest(tmp_path, folder):
    """A server that queues one generation per key: 429 for the second and third POST, which
    are sent again after Retry-After, while the first is polled."""
    srv = ServerProcess(tmp_path / "data", {**TINY, "SVD_API_KEYS": KEY,
                                            "SVD_MAX_QUEUED_PER_KEY": "1"}).start()
    try:
        (folder / "b.png").write_bytes(png_bytes(128, 64))
        out = tmp_path / "out"
        out.mkdir()
        run = svd("generate", str(folder), "-o", str(out), "--server", srv.url, "--api-key", KEY)
        log = srv.log()
    finally:
        srv.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "b.mp4", "c.mp4"]
    assert "3 of 3 videos made (in" in run.stderr
    assert re.search(r"method=POST path=/v2beta/image-to-video .*status=429", log)
