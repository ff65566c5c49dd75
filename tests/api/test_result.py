"""GET /v2beta/image-to-video/result/{id}: progress, content negotiation, errors."""
from __future__ import annotations

import base64
import stat
import time

import httpx
import pytest

from app.jobs.sweeper import sweep
from tests.api.test_start import URL, assert_error, start
from tests.fakes import FakeGenerator
from tests.helpers import KEY_B, inspect_mp4, jpeg_bytes, running_server, wait_done

RESULT = URL + "/result/"


@pytest.fixture
def finished(client):
    job_id = start(client, data={"seed": "1234"}).json()["id"]
    assert wait_done(client, job_id).status_code == 200
    return job_id


def test_in_progress_is_202_with_exactly_that_status(tmp_path):
    gen = FakeGenerator()
    gen.hold = True
    with running_server(tmp_path, generator=gen) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": "test-key-a"}) as client:
        first = start(client).json()["id"]          # running (held)
        second = start(client).json()["id"]         # queued behind it
        for job_id in (first, second):
            r = client.get(RESULT + job_id)
            assert r.status_code == 202
            assert r.headers["content-type"] == "application/json"
            body = r.json()
            assert (body["id"], body["status"]) == (job_id, "in-progress")   # exactly that
        running = client.get(RESULT + first).json()
        assert running["stage"] in ("starting", "denoising") and 0 <= running["progress"] < 1
        queued = client.get(RESULT + second).json()
        assert (queued["stage"], queued["queue_position"], queued["progress"]) == ("queued", 1, 0)
        gen.release.set()
        assert wait_done(client, first).status_code == 200
        assert wait_done(client, second).status_code == 200


@pytest.mark.parametrize("accept", [None, "video/*", "*/*", "video/mp4", "text/html",
                                    "video/*, application/json", "image/png",
                                    "application/xml;q=0.9"])
def test_mp4_for_video_any_or_no_accept(client, finished, accept):
    headers = {"accept": accept} if accept else {}
    if accept is None:
        client.headers.pop("accept", None)
    r = client.get(RESULT + finished, headers=headers)
    assert r.status_code == 200
    assert r.headers["content-type"] == "video/mp4"
    assert r.headers["finish-reason"] == "SUCCESS"
    assert r.headers["seed"] == "1234"
    info = inspect_mp4(r.content)
    assert info.codec == "h264" and info.frames == FakeGenerator.default_frames


@pytest.mark.parametrize("accept", ["application/json", "application/json, video/*",
                                    "application/json; charset=utf-8"])
def test_json_with_base64_video_when_asked(client, finished, accept):
    r = client.get(RESULT + finished, headers={"accept": accept})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json; type=video/mp4"
    body = r.json()
    assert body["finish_reason"] == "SUCCESS"
    assert body["seed"] == 1234 and isinstance(body["seed"], int)
    mp4 = base64.b64decode(body["video"])
    assert mp4 == client.get(RESULT + finished, headers={"accept": "video/*"}).content


def test_get_ignores_body_and_content_type(client, finished):
    r = client.request("GET", RESULT + finished, headers={"content-type": "application/json",
                                                           "accept": "video/*"})
    assert r.status_code == 200
    r = client.request("GET", RESULT + finished, content=b'{"x": 1}',
                       headers={"content-type": "application/json", "accept": "video/*"})
    assert r.status_code == 200


def test_another_key_gets_404(server, finished):
    r = httpx.get(server.url + RESULT + finished, headers={"authorization": f"Bearer {KEY_B}"})
    body = assert_error(r, 404, "generation_not_found", "id")
    assert body["errors"] == ["id: the generation either does not exist or has expired."]


def test_poll_needs_a_key(server, finished):
    assert_error(httpx.get(server.url + RESULT + finished), 401, "unauthorized")


@pytest.mark.parametrize("bad_id", [
    "0" * 64, "abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "..%2F..%2Fetc%2Fpasswd",
    "..%2F" + "0" * 64, "%00", "0" * 64 + "%2F..", "0" * 32 + "/" + "0" * 31, "%20" + "0" * 64,
])
def test_unknown_or_malformed_ids_are_404(server, bad_id):
    r = httpx.get(server.url + RESULT + bad_id, headers={"authorization": "test-key-a"})
    assert_error(r, 404, "generation_not_found", "id")


def test_failed_generation_is_500_and_the_worker_goes_on(tmp_path):
    with running_server(tmp_path, generator=FakeGenerator(fail_on_motion=13)) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": "test-key-a"}) as client:
        bad = start(client, data={"motion_bucket_id": "13"}).json()["id"]
        good = start(client).json()["id"]
        body = assert_error(wait_done(client, bad), 500, "internal_error")
        assert "Traceback" not in str(body) and "File \"" not in str(body)
        assert wait_done(client, good).status_code == 200


def test_results_expire_and_the_sweeper_removes_everything(tmp_path):
    with running_server(tmp_path, result_ttl_hours=1 / 3600) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": "test-key-a"}) as client:
        image = jpeg_bytes(64, 64)                 # noise: its bytes occur nowhere else
        job_id = start(client, image=image).json()["id"]
        assert wait_done(client, job_id).status_code == 200
        state = server.app.state
        mp4 = state.results.path(state.results.key_for(job_id))
        assert mp4.exists()
        time.sleep(1.2)
        assert_error(client.get(RESULT + job_id), 404, "generation_not_found")
        assert sweep(state.store, state.results, server.settings) == 1
        assert not mp4.exists()
        assert state.store.get(job_id) is None
        data = server.settings.data_dir
        leftovers = b"".join(p.read_bytes() for p in data.glob("svd.db*"))
        assert image[200:1200] not in leftovers        # not in svd.db, nor in svd.db-wal


def test_the_data_dir_results_and_database_are_private(tmp_path, client, server):
    assert wait_done(client, start(client).json()["id"]).status_code == 200
    data = server.settings.data_dir
    for folder in (data, data / "results"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for f in [*data.glob("svd.db*"), *(data / "results").iterdir(), data / "webhook_secret"]:
        if f.exists():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_unknown_routes_and_methods_use_the_error_shape(client):
    r = client.get("/v2beta/nope")
    body = assert_error(r, 404, "not_found")
    assert "detail" not in body
    r = client.put(URL, content=b"x")
    assert_error(r, 405, "method_not_allowed")
    r = client.delete(RESULT + "0" * 64)
    assert r.status_code in (404, 405) and "detail" not in r.json()


def test_health_ready_and_model_header(client, server):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["model"] == "fake generator (tests)"
    assert ready.headers["x-svd-model"] == "fake"


def test_openapi_describes_the_endpoints(client):
    doc = client.get("/openapi.json").json()
    post = doc["paths"]["/v2beta/image-to-video"]["post"]
    schema = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == ["image"]
    assert schema["properties"]["seed"]["maximum"] == 4294967294
    assert schema["properties"]["motion_bucket_id"]["minimum"] == 1
    get = doc["paths"]["/v2beta/image-to-video/result/{id}"]["get"]
    assert {"200", "202", "404"} <= set(get["responses"])
    assert "video/mp4" in get["responses"]["200"]["content"]
    assert not any(p.startswith("/v2alpha") for p in doc["paths"])
