"""Request ids, security headers, CORS, metrics."""
from __future__ import annotations

import re

import time

import httpx

from tests.api.test_start import assert_error, start
from tests.helpers import KEY_A, running_server, wait_done


def test_request_id_is_echoed_or_made_and_errors_carry_it(client):
    r = client.get("/healthz", headers={"x-request-id": "my-trace-42"})
    assert r.headers["x-request-id"] == "my-trace-42"
    generated = client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    bad = client.get("/healthz", headers={"x-request-id": "evil\tvalue with spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["x-request-id"])
    err = client.get("/v2beta/image-to-video/result/nope")
    assert assert_error(err, 404, "generation_not_found")["id"] == err.headers["x-request-id"]


def test_security_headers_on_every_response(client):
    for r in (client.get("/healthz"), client.get("/v2beta/image-to-video/result/x"),
              start(client)):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in r.headers["content-security-policy"]


def test_cors_is_off_by_default(client):
    r = client.options("/v2beta/image-to-video", headers={
        "origin": "https://evil.example", "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    r = client.get("/healthz", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_when_configured(tmp_path):
    with running_server(tmp_path, cors_origins="https://app.example") as server:
        r = httpx.options(server.url + "/v2beta/image-to-video", headers={
            "origin": "https://app.example", "access-control-request-method": "POST",
            "access-control-request-headers": "authorization"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.get(server.url + "/healthz", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_metrics_count_requests_jobs_phases_and_videos(client):
    job_id = start(client).json()["id"]
    assert wait_done(client, job_id).status_code == 200
    client.get("/v2beta/image-to-video/result/" + "0" * 64)
    text = client.get("/metrics").text
    assert 'svd_http_requests_total{method="POST",route="/v2beta/image-to-video",status="200"} 1.0' in text
    assert 'route="/v2beta/image-to-video/result/{id:path}",status="404"' in text
    assert 'svd_jobs{state="succeeded"} 1.0' in text
    assert "svd_queue_depth 0.0" in text
    assert "svd_videos_generated_total 1.0" in text
    for phase in ("queue_wait", "generate", "encode", "run"):
        assert f'svd_job_phase_seconds_count{{phase="{phase}"}} 1.0' in text
    assert "svd_worker_restarts_total" in text or "svd_worker_restarts" in text
    assert KEY_A not in text


def test_every_served_page_has_its_route_label_and_only_404s_are_unmatched(client):
    pages = ("/docs", "/openapi.json", "/docs/swagger-ui.css", "/healthz")
    for path in pages:
        assert client.get(path).status_code == 200
    assert client.get("/no/such/page").status_code == 404

    def counted() -> list[str]:
        return [line for line in client.get("/metrics").text.splitlines()
                if line.startswith("svd_http_requests_total{")]

    # A request is counted once its response is sent: a file's last chunk may reach the
    # client a moment before that.
    deadline = time.monotonic() + 5
    while not all(any(f'route="{p}",status="200"' in line for line in counted()) for p in pages):
        assert time.monotonic() < deadline, counted()
        time.sleep(0.05)
    unmatched = [line for line in counted() if 'route="unmatched"' in line]
    assert unmatched and all('status="404"' in line for line in unmatched)


def test_keys_never_reach_the_logs(tmp_path, caplog):
    caplog.set_level("DEBUG")
    with running_server(tmp_path) as server:
        for key in (KEY_A, "sk-wrong-secret-key"):
            headers = {"authorization": f"Bearer {key}"}
            r = httpx.post(server.url + "/v2beta/image-to-video", headers=headers,
                           files={"image": ("a.png", b"not an image")})
            assert r.status_code in (400, 401)
            httpx.get(server.url + "/v2beta/image-to-video/result/" + "1" * 64, headers=headers)
    assert caplog.text and "request_id=" in caplog.text
    assert KEY_A not in caplog.text and "sk-wrong-secret-key" not in caplog.text


def test_control_characters_in_a_path_cannot_forge_or_colour_log_lines(tmp_path, caplog):
    caplog.set_level("INFO")
    with running_server(tmp_path) as server:
        forged = "/x%0d%0a2026-01-01 INFO svd.access: forged%1b[31m%00%e2%80%a8end"
        assert httpx.get(server.url + forged).status_code == 404
    lines = [r.getMessage() for r in caplog.records if "forged" in r.getMessage()]
    assert lines, "the request was not logged"
    for line in lines:
        for raw in ("\r", "\n", "\x1b", "\x00", "\u2028"):
            assert raw not in line
    assert any("\\x0d\\x0a2026-01-01" in line and "\\x1b[31m" in line and "\\u2028" in line
               for line in lines)
