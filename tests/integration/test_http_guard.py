"""Connection limits below the app (app/http_guard.py), over real sockets: a request line or
headers over SVD_MAX_HEADER_KB get 431 before the rest is read, heads and bodies that do not
arrive within SVD_REQUEST_TIMEOUT_S are closed, a long response is never cut, and connections
beyond SVD_MAX_CONNECTIONS get 503 with Retry-After."""
from __future__ import annotations

import json
import logging
import select
import socket
import time

import httpx
import pytest

from app import http_guard
from tests.helpers import KEY_A, png_bytes, running_server

CAP = 8 * 1024          # SVD_MAX_HEADER_KB=8
TIMEOUT_S = 1.0         # SVD_REQUEST_TIMEOUT_S
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: t\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("guard"), max_header_kb=CAP // 1024,
                        request_timeout_s=TIMEOUT_S) as s:
        yield s


def noise_png_bytes(w: int, h: int) -> bytes:
    """Noise does not compress: a PNG about w * h * 3 bytes long."""
    import io

    import numpy as np
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
        buf, format="PNG")
    return buf.getvalue()


def connect(server, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


_unread: dict[int, bytes] = {}     # socket fd -> bytes of the next pipelined response


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length: (status, headers, body)."""
    data = _unread.pop(sock.fileno(), b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole response head: {data[:200]!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed in the middle of a body"
        body += chunk
    if body[length:]:
        _unread[sock.fileno()] = body[length:]
    return int(lines[0].split()[1]), headers, body[:length]


def closes_after(sock: socket.socket, limit_s: float = 6.0) -> float:
    """Seconds until the server closes the connection (whatever it sent before)."""
    t0 = time.monotonic()
    sock.settimeout(limit_s)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - t0


def assert_error(status: int, headers: dict, body: bytes, want_status: int, name: str) -> dict:
    assert status == want_status, body[:300]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    err = json.loads(body)
    assert set(err) == {"id", "name", "errors", "message"}
    assert len(err["id"]) == 32 and int(err["id"], 16) >= 0
    assert err["name"] == name and err["errors"] and err["message"]
    return err


def test_request_line_over_the_cap_is_431_and_closed(server):
    with connect(server) as sock:
        sock.sendall(b"GET /" + b"a" * (CAP + 100) + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        err = assert_error(*read_response(sock), 431, "request_header_fields_too_large")
        assert "8 KiB" in err["errors"][0]
        assert closes_after(sock) < 2


def test_header_block_streamed_over_the_cap_is_refused_before_it_ends(server):
    total, sent = 16 * 1024 * 1024, 0
    with connect(server) as sock:
        sock.sendall(HEALTHZ + b"X-Pad: ")
        piece = b"a" * 4096
        while sent < total:                 # the server answers while this is still sending
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        assert sent < total / 4
        assert_error(*read_response(sock), 431, "request_header_fields_too_large")
        assert closes_after(sock) < 2


def test_heads_under_the_cap_are_served_even_in_one_big_chunk(server):
    pad = CAP - len(HEALTHZ + b"X-Pad: \r\n\r\n")
    exact = HEALTHZ + b"X-Pad: " + b"a" * pad + b"\r\n\r\n"
    assert len(exact) == CAP
    with connect(server) as sock:
        sock.sendall(exact)                 # exactly the cap: allowed
        assert read_response(sock)[0] == 200
        sock.sendall(exact * 3)             # three pipelined requests, 3 caps in all
        assert [read_response(sock)[0] for _ in range(3)] == [200, 200, 200]
    with connect(server) as sock:           # one byte more: refused
        sock.sendall(exact.replace(b"X-Pad: ", b"X-Pad: a"))
        assert read_response(sock)[0] == 431
    # A small head with a body several caps long, sent in one piece.
    image = noise_png_bytes(96, 64)
    assert len(image) > 2 * CAP
    body = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--b--\r\n")
    request = (f"POST /v2beta/image-to-video HTTP/1.1\r\nHost: t\r\nAuthorization: {KEY_A}\r\n"
               f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body)}\r\n"
               "\r\n").encode() + body
    with connect(server) as sock:
        sock.sendall(request + HEALTHZ + b"\r\n")
        status, _, answer = read_response(sock)
        assert status == 200, answer[:300]
        assert read_response(sock)[0] == 200


def test_a_connection_that_sends_nothing_is_closed_after_the_timeout(server):
    with connect(server) as sock:
        assert 0.8 * TIMEOUT_S <= closes_after(sock) <= TIMEOUT_S + 2


def test_a_head_that_does_not_arrive_in_time_gets_408_even_when_it_trickles(server):
    with connect(server) as sock:
        sock.sendall(HEALTHZ)
        t0, answered = time.monotonic(), b""
        while time.monotonic() - t0 < TIMEOUT_S + 3:    # a byte every 0.2 s: still too slow
            if select.select([sock], [], [], 0.2)[0]:
                answered = sock.recv(65536)
                break
            sock.sendall(b"X")
        elapsed = time.monotonic() - t0
        assert answered.startswith(b"HTTP/1.1 408 "), answered[:100]
        assert 0.8 * TIMEOUT_S <= elapsed <= TIMEOUT_S + 2
        assert closes_after(sock) < 2


def test_a_body_that_does_not_arrive_in_time_is_closed(server):
    with connect(server) as sock:
        sock.sendall(b"POST /v2beta/image-to-video HTTP/1.1\r\nHost: t\r\n"
                     b"Authorization: " + KEY_A.encode() + b"\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 100000\r\n\r\n--b\r\n")
        assert 0.8 * TIMEOUT_S <= closes_after(sock) <= TIMEOUT_S + 2


def test_keep_alive_between_requests_is_not_the_head_timeout(server):
    with connect(server) as sock:
        sock.sendall(HEALTHZ + b"\r\n")
        assert read_response(sock)[0] == 200
        time.sleep(TIMEOUT_S * 1.6)         # idle, under uvicorn's keep-alive timeout (5 s)
        sock.sendall(HEALTHZ + b"\r\n")
        assert read_response(sock)[0] == 200


def test_a_long_response_is_never_cut(server):
    gen = server.generator
    gen.hold = True                         # the job waits inside the generator
    try:
        with httpx.Client(base_url=server.url, headers={"authorization": KEY_A}) as client:
            r = client.post("/v2beta/image-to-video",
                            files={"image": ("a.png", png_bytes(), "image/png")})
            assert r.status_code == 200, r.text
            job_id = r.json()["id"]
        with connect(server) as sock:
            sock.sendall(f"GET /v2beta/image-to-video/result/{job_id}/events HTTP/1.1\r\n"
                         f"Host: t\r\nAuthorization: {KEY_A}\r\n\r\n".encode())
            stream = sock.recv(65536)
            assert stream.startswith(b"HTTP/1.1 200 ")
            time.sleep(TIMEOUT_S * 2.5)     # the client sends nothing; the stream stays
            gen.hold = False
            gen.release.set()
            deadline = time.monotonic() + 10
            while b"event: done" not in stream:
                assert time.monotonic() < deadline, stream[-300:]
                chunk = sock.recv(65536)
                assert chunk, "the event stream was cut"
                stream += chunk
    finally:
        gen.hold = False
        gen.release.set()


def test_connections_beyond_the_bound_get_503_with_retry_after(tmp_path):
    with running_server(tmp_path, max_connections=5) as server:
        connections = server.server.server_state.connections
        deadline = time.monotonic() + 5
        while connections:                  # the readiness checks' connections are gone
            assert time.monotonic() < deadline
            time.sleep(0.01)
        held = [connect(server) for _ in range(5)]
        try:
            for sock in held:               # each one served, and kept open
                sock.sendall(HEALTHZ + b"\r\n")
                assert read_response(sock)[0] == 200
            with connect(server) as extra:
                extra.sendall(HEALTHZ + b"\r\n")
                status, headers, body = read_response(extra)
                err = assert_error(status, headers, body, 503, "service_unavailable")
                assert err["errors"][0].startswith("server: ")
                assert int(headers["retry-after"]) > 0
                assert closes_after(extra) < 2
            held.pop().close()
            time.sleep(0.2)
            with connect(server) as sock:   # a slot is free again
                sock.sendall(HEALTHZ + b"\r\n")
                assert read_response(sock)[0] == 200
        finally:
            for sock in held:
                sock.close()


def test_the_bound_stays_below_the_open_file_limit(monkeypatch, caplog):
    resource = pytest.importorskip("resource")
    limits = [(300, 300)]
    monkeypatch.setattr(resource, "getrlimit", lambda which: limits[0])
    with caplog.at_level(logging.WARNING, logger="app.http_guard"):
        bound = http_guard.fit_to_open_files(1000)
    assert bound == 300 - http_guard.FD_RESERVE
    assert "max_connections_lowered" in caplog.text and "bound=172" in caplog.text
    limits[0] = (4096, 4096)
    assert http_guard.fit_to_open_files(1000) == 1000
    limits[0] = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    assert http_guard.fit_to_open_files(1000) == 1000
