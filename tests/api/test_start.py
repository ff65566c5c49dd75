"""POST /v2beta/image-to-video: what clients send, and every way to get it wrong."""
from __future__ import annotations

import re
import struct
import time
import zlib

import httpx
import pytest

from app.jobs.model import JobState
from tests.helpers import KEY_A, jpeg_bytes, png_bytes, wait_done

URL = "/v2beta/image-to-video"


def start(client, image=None, data=None, **kw):
    files = {"image": ("in.png", png_bytes() if image is None else image, "image/png")}
    return client.post(URL, files=files, data=data or {}, **kw)


def assert_error(r: httpx.Response, status: int, name: str, field: str | None = None):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"id", "name", "errors", "message"}
    assert re.fullmatch(r"[0-9a-f]{32}", body["id"])
    assert body["name"] == name
    assert body["errors"] and all(isinstance(e, str) for e in body["errors"])
    assert isinstance(body["message"], str) and body["message"]
    if field:
        assert any(e.startswith(f"{field}: ") for e in body["errors"]), body["errors"]
    return body


def total_jobs(server) -> int:
    return sum(server.app.state.store.count(s) for s in JobState)


def test_start_returns_a_64_hex_id_and_the_video_follows(client):
    r = start(client, data={"seed": "42", "cfg_scale": "1.8", "motion_bucket_id": "127"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    job_id = r.json()["id"]
    assert re.fullmatch(r"[0-9a-f]{64}", job_id)
    assert set(r.json()) == {"id"}
    done = wait_done(client, job_id)
    assert done.status_code == 200 and done.headers["seed"] == "42"


def test_numbers_as_strings_odd_part_content_types_and_fixed_boundary(client, server):
    # What known clients do: image part labelled application/json or unlabelled, a fixed
    # boundary, Accept: video/* on the POST. The answer is still JSON with an id.
    boundary = "----fixedboundary7MA4YWxkTrZu0gW"
    image = png_bytes()
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x"\r\n'
        f"Content-Type: application/json\r\n\r\n".encode() + image + b"\r\n",
        f'--{boundary}\r\nContent-Disposition: form-data; name="seed"\r\n\r\n7\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="cfg_scale"\r\n\r\n2.5\r\n'.encode(),
        f'--{boundary}--\r\n'.encode(),
    ]
    r = client.post(URL, content=b"".join(parts), headers={
        "content-type": f"multipart/form-data; boundary={boundary}", "accept": "video/*"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    job_id = r.json()["id"]
    assert wait_done(client, job_id).headers["seed"] == "7"
    assert server.generator.calls[-1].cfg_scale == 2.5

    no_type = client.post(URL, files={"image": ("x", png_bytes())})
    assert no_type.status_code == 200


def test_defaults_and_random_seed(client, server):
    r = start(client)                        # no seed, cfg or motion: like clients that omit 0
    assert r.status_code == 200
    seed = int(wait_done(client, r.json()["id"]).headers["seed"])
    assert 1 <= seed <= 4294967294
    call = server.generator.calls[-1]
    assert (call.cfg_scale, call.motion_bucket_id, call.seed) == (1.8, 127, seed)
    zero = start(client, data={"seed": "0"})
    seed0 = int(wait_done(client, zero.json()["id"]).headers["seed"])
    assert 1 <= seed0 <= 4294967294 and seed0 != seed


@pytest.mark.parametrize("field,value", [
    ("seed", "1.5"), ("seed", "-1"), ("seed", "4294967295"), ("seed", "nan"), ("seed", ""),
    ("seed", "abc"), ("seed", "1e3"), ("seed", "1_000"),
    ("cfg_scale", "nan"), ("cfg_scale", "inf"), ("cfg_scale", "-inf"), ("cfg_scale", "10.01"),
    ("cfg_scale", "-0.1"), ("cfg_scale", ""), ("cfg_scale", "1,8"),
    ("motion_bucket_id", "0"), ("motion_bucket_id", "256"), ("motion_bucket_id", "127.0"),
    ("motion_bucket_id", " "),
    # ASCII digits only, as the hosted API: int() and float() also take these.
    ("seed", "\u0661\u0662"), ("seed", "\uff11\uff12"), ("motion_bucket_id", "\u0661\u0662\u0667"),
    ("cfg_scale", "\u0662.\u0665"), ("seed", "\u00a012"),
])
def test_bad_numbers_are_400_and_queue_nothing(client, server, field, value):
    r = start(client, data={field: value})
    body = assert_error(r, 400, "bad_request", field)
    assert "must be" in body["errors"][0]
    assert total_jobs(server) == 0


@pytest.mark.parametrize("data", [
    {"seed": "4294967294", "cfg_scale": "0", "motion_bucket_id": "1"},
    {"seed": "1", "cfg_scale": "10", "motion_bucket_id": "255"},
    {"seed": " 12 ", "cfg_scale": ".5"},
])
def test_edge_values_are_accepted(client, data):
    assert start(client, data=data).status_code == 200


def test_several_errors_are_reported_together(client):
    body = assert_error(start(client, data={"seed": "x", "motion_bucket_id": "999"}), 400, "bad_request")
    assert {e.split(":")[0] for e in body["errors"]} == {"seed", "motion_bucket_id"}


def test_unknown_fields_are_ignored(client):
    assert start(client, data={"seed": "3", "style": "anime", "width": "99"}).status_code == 200


def test_at_most_64_text_fields_of_64_kib_each_as_the_readme_says(client, server):
    before = total_jobs(server)
    assert start(client, data={f"extra{i}": "1" for i in range(64)}).status_code == 200
    body = assert_error(start(client, data={f"extra{i}": "1" for i in range(65)}), 400,
                        "bad_request")
    assert "Maximum number of fields is 64" in body["errors"][0]
    body = assert_error(start(client, data={"style": "x" * (64 * 1024 + 1)}), 400, "bad_request")
    assert "64KB" in body["errors"][0]
    assert total_jobs(server) == before + 1


def test_jpeg_is_accepted_and_a_png_named_jpeg_too(client):
    r = client.post(URL, files={"image": ("photo.png", jpeg_bytes(), "image/png")})
    assert r.status_code == 200
    assert wait_done(client, r.json()["id"]).status_code == 200


def _png_claiming(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


def _gif() -> bytes:
    return b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"


@pytest.mark.parametrize("image,what", [
    (b"", "is empty"),
    (b"hello, this is not an image", "PNG or JPEG"),
    (_gif(), "PNG or JPEG"),
    (b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 32, "PNG or JPEG"),
    (b"II*\x00" + b"\x00" * 64, "PNG or JPEG"),
    (_png_claiming(30000, 30000), "not supported"),
    (_png_claiming(1024, 576), "could not be decoded"),
    (png_bytes()[:-30], "could not be decoded"),
    (jpeg_bytes()[: len(jpeg_bytes()) // 2], "could not be decoded"),
    (png_bytes(640, 480), "not supported"),
    (jpeg_bytes(63, 64), "not supported"),
])
def test_bad_images_are_400(client, server, image, what):
    t = time.perf_counter()
    body = assert_error(start(client, image=image), 400, "bad_request", "image")
    assert what in body["errors"][0]
    assert time.perf_counter() - t < 5
    assert total_jobs(server) == 0


def test_missing_image_and_text_image(client):
    assert_error(client.post(URL, data={"seed": "1"}, files={"other": ("a", b"x")}), 400,
                 "bad_request", "image")
    r = client.post(URL, content=b"--b\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\n"
                    b"not a file\r\n--b--\r\n",
                    headers={"content-type": "multipart/form-data; boundary=b"})
    assert_error(r, 400, "bad_request", "image")


@pytest.mark.parametrize("body,ctype", [
    (b'{"image": "aGVsbG8=", "seed": 1}', "application/json"),
    (b"seed=1", "application/x-www-form-urlencoded"),
    (b"", None),
    (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a\"\r\n\r\nabc", "multipart/form-data; boundary=b"),
    (b"garbage", "multipart/form-data"),
])
def test_not_a_multipart_body_is_400(client, server, body, ctype):
    headers = {"content-type": ctype} if ctype else {}
    assert_error(client.post(URL, content=body, headers=headers), 400, "bad_request")
    assert total_jobs(server) == 0


def test_body_over_10_mib_is_413_with_and_without_content_length(client, server):
    big = b"\x89PNG\r\n\x1a\n" + b"\x00" * (10 * 1024 * 1024)
    body = assert_error(start(client, image=big), 413, "payload_too_large", "body")
    assert "10MiB" in body["errors"][0]

    def chunks():
        yield b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a\"\r\n\r\n"
        for _ in range(11):
            yield b"\x00" * (1024 * 1024)
        yield b"\r\n--b--\r\n"

    r = client.post(URL, content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert_error(r, 413, "payload_too_large", "body")
    assert total_jobs(server) == 0


@pytest.mark.parametrize("auth", [None, "", "Bearer", "Bearer wrong", "wrong",
                                  f"Basic {KEY_A}", f"Bearer {KEY_A}x"])
def test_missing_or_invalid_key_is_401(server, auth):
    headers = {} if auth is None else {"authorization": auth}
    r = httpx.post(server.url + URL, files={"image": ("a.png", png_bytes())}, headers=headers)
    assert_error(r, 401, "unauthorized", "authorization")
    assert total_jobs(server) == 0


def test_bare_key_and_client_headers_are_accepted(server):
    r = httpx.post(server.url + URL, files={"image": ("a.png", png_bytes())},
                   headers={"authorization": KEY_A, "stability-client-id": "my-app",
                            "stability-client-user-id": "u" * 300,
                            "stability-client-version": "1.2.3"})
    assert r.status_code == 200


def test_v2alpha_alias(client):
    r = client.post("/v2alpha/generation/image-to-video", files={"image": ("a.png", png_bytes())})
    assert r.status_code == 200
    assert wait_done(client, r.json()["id"]).status_code == 200
    res = client.get(f"/v2alpha/generation/image-to-video/result/{r.json()['id']}")
    assert res.status_code == 200 and res.headers["content-type"] == "video/mp4"


def _rotated_jpeg(w: int, h: int) -> bytes:
    import io

    from PIL import Image
    exif = Image.Exif()
    exif[0x0112] = 6                     # stored sideways: viewers turn it a quarter
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (20, 200, 20)).save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


def test_exif_orientation_decides_the_video_size(client, server):
    r = start(client, image=_rotated_jpeg(1024, 576))
    assert r.status_code == 200
    assert wait_done(client, r.json()["id"]).status_code == 200
    assert server.generator.calls[-1].image.size == (576, 1024)
    body = assert_error(start(client, image=_rotated_jpeg(96, 64)), 400, "bad_request", "image")
    assert "64x96" in body["errors"][0]


def test_multipart_without_closing_boundary_is_named_as_such(client, server):
    body = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
            + png_bytes() + b"\r\n")
    r = client.post(URL, content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert "closing boundary" in assert_error(r, 400, "bad_request", "body")["errors"][0]
    assert total_jobs(server) == 0


def test_a_trailing_slash_is_served_in_place_never_redirected_by_host(client, server):
    evil = {"host": "evil.example"}
    files = {"image": ("in.png", png_bytes(), "image/png")}
    r = client.post(URL + "/", files=files, headers=evil, follow_redirects=False)
    assert r.status_code == 200, r.text
    assert "evil.example" not in str(r.headers)
    poll = client.get(f"{URL}/result/{r.json()['id']}/", headers=evil, follow_redirects=False)
    assert poll.status_code in (200, 202)
    assert "evil.example" not in str(poll.headers)
    no_key = httpx.post(server.url + URL + "/", files=files, headers=evil, follow_redirects=False)
    assert_error(no_key, 401, "unauthorized")
