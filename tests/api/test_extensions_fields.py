"""Optional form fields beyond the Stability API, and SVD_ALLOWED_SIZES=any."""
from __future__ import annotations

import io

import av
import httpx
import pytest
from PIL import Image

from tests.api.test_start import assert_error, start
from tests.helpers import KEY_A, inspect_mp4, png_bytes, running_server, wait_done


def test_frames_steps_fps_and_noise_reach_the_model_and_the_file(client, server):
    r = start(client, data={"frames": "6", "steps": "5", "fps": "12", "noise_aug_strength": "0.1"})
    video = wait_done(client, r.json()["id"], headers={"accept": "video/*"})
    info = inspect_mp4(video.content)
    assert (info.frames, round(info.fps)) == (6, 12)
    call = server.generator.calls[-1]
    assert (call.num_frames, call.steps, call.noise_aug_strength) == (6, 5, 0.1)


@pytest.mark.parametrize("fmt,media,codec", [("webm", "video/webm", "vp9"), ("gif", "image/gif", None)])
def test_other_output_formats(client, fmt, media, codec):
    job_id = start(client, data={"output_format": fmt}).json()["id"]
    r = wait_done(client, job_id, headers={"accept": "*/*"})
    assert r.status_code == 200 and r.headers["content-type"] == media
    if codec:
        with av.open(io.BytesIO(r.content)) as c:
            assert c.streams.video[0].codec_context.name == codec
            assert sum(1 for _ in c.decode(video=0)) == 4
    else:
        assert Image.open(io.BytesIO(r.content)).n_frames == 4
    as_json = client.get(f"/v2beta/image-to-video/result/{job_id}", headers={"accept": "application/json"})
    assert as_json.headers["content-type"] == f"application/json; type={media}"


@pytest.mark.parametrize("field,value", [("frames", "0"), ("frames", "129"), ("steps", "201"),
                                         ("fps", "0"), ("noise_aug_strength", "1.5"),
                                         ("output_format", "avi"), ("frames", "2.5")])
def test_bad_extension_values_are_400(client, field, value):
    assert_error(start(client, data={field: value}), 400, "bad_request", field)


def test_any_size_policy(tmp_path):
    with running_server(tmp_path, allowed_sizes="any", max_pixels=128 * 128) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
        ok = start(client, image=png_bytes(128, 64))
        assert ok.status_code == 200
        assert inspect_mp4(wait_done(client, ok.json()["id"]).content).width == 128
        for w, h in ((100, 64), (32, 64), (256, 128)):
            body = assert_error(start(client, image=png_bytes(w, h)), 400, "bad_request", "image")
            assert "multiples of 64" in body["errors"][0]
