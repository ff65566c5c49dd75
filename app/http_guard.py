"""Connection limits enforced in the HTTP protocol, before a request reaches the app.

uvicorn's httptools protocol accepts a request line and headers of any size (it joins the
pieces with `+=`, so one client streaming a huge header stalls the event loop for everyone),
waits forever for a head or a body that never finishes, and accepts connections until the
process runs out of file descriptors. GuardedHttpProtocol adds, per connection:

- a cap on the request line plus headers (SVD_MAX_HEADER_KB): bytes are counted before they
  are fed to the parser, and the request is answered 431 and closed at the cap;
- a deadline for the head (SVD_REQUEST_TIMEOUT_S from its first byte, or from the connection's
  start) and another for the body (from the end of the head): a late request is closed;
- a bound on open connections (SVD_MAX_CONNECTIONS, kept below the open-file limit): the
  connection beyond it is answered 503 with Retry-After and closed at once.

Nothing here times a response: a long Server-Sent Events stream, or a keep-alive connection
between requests (uvicorn's own keep-alive timeout), is never cut by these deadlines.

The subclass uses a few of uvicorn's private names (the parser, the cycle, flow control,
STATUS_LINE); tests/integration/test_http_guard.py says so when an upgrade changes them.
"""
from __future__ import annotations

import json
import logging
import uuid

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.api.middleware import API_CSP, SECURITY_HEADERS
from app.logs import kv

log = logging.getLogger(__name__)
access_log = logging.getLogger("svd.access")

# Descriptors kept free beside the connections: the database pool, log files, model files, a
# video being read for a download, the listening socket. A connection beyond the bound is
# still accepted (so it can be told 503), which needs a free descriptor too.
FD_RESERVE = 128
BUSY_RETRY_S = 5


def fit_to_open_files(requested: int, explicit: bool = True) -> int:
    """`requested`, or less where the open-file soft limit (RLIMIT_NOFILE) would run out first.
    Out of descriptors (EMFILE), accept() fails, so every new connection waits unanswered, not
    just the excess, and opening a video or a database connection fails too. Said as a warning
    when the operator asked for more (`explicit`); the default just fits the machine."""
    try:
        import resource
    except ImportError:                     # not on POSIX: nothing to read
        return requested
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or requested + FD_RESERVE <= soft:
        return requested
    bound = max(soft - FD_RESERVE, soft // 2, 1)
    (log.warning if explicit else log.info)(kv(event="max_connections_lowered", requested=requested, bound=bound,
                   open_file_limit=soft, hint="raise the limit (ulimit -n, LimitNOFILE=, "
                   "docker --ulimit nofile=) to allow more"))
    return bound


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; uvicorn_config() makes a subclass
    that carries the numbers."""

    max_head_bytes = 64 * 1024
    timeout_s = 60.0
    max_connections = 1000

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._in_head = True        # the next byte belongs to a request line or headers
        self._head_bytes = 0        # bytes fed to the parser for the current head
        self._timer = None          # the head's or the body's deadline

    # Connections.
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.connections.discard(self)     # a refused connection holds no slot
            self._refuse(503, "service_unavailable", "server: too many open connections",
                         "The server has too many open connections. Retry later.",
                         [(b"retry-after", str(BUSY_RETRY_S).encode())])
            return
        self._arm("head")                      # also closes a connection that sends nothing

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        if self._in_head and self._timer is None:     # even bytes the parser skips (CRLF)
            self._arm("head")
        # Fed in slices so that the head's bytes are counted before the parser buffers them.
        # While in a head, a slice ends at the cap; in a body, it is at most a cap long: when
        # a slice finishes one request and starts the next (pipelining), the next head's
        # first bytes go uncounted, so no head ever passes twice the cap.
        view = memoryview(data)
        while view:
            if self._in_head:
                room = self.max_head_bytes - self._head_bytes
                if room <= 0:
                    self._head_too_large()
                    return
                piece, view = view[:room], view[room:]
                self._head_bytes += len(piece)
            else:
                piece, view = view[:self.max_head_bytes], view[self.max_head_bytes:]
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserError:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
                return
            except httptools.HttpParserUpgrade:
                # No WebSockets here (ws="none"): the app answered the request as plain HTTP;
                # what follows on the connection is dropped, as uvicorn does. Not logged:
                # uvicorn's warning would ask for a WebSocket library, once per request.
                return
            if self.transport.is_closing():
                return

    # Parser callbacks: where a head and a body begin and end.
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._timer is None:                # a request after keep-alive: from its 1st byte
            self._arm("head")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm("body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head, self._head_bytes = True, 0
        self._disarm()
        super().on_message_complete()

    # Deadlines.
    def _arm(self, phase: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(self.timeout_s, self._expired, phase)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, phase: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            # The server stopped reading (the app has not taken the body yet, or a pipelined
            # request waits for the response before it): not the client's delay.
            self._arm(phase)
            return
        if phase == "head" and self._head_bytes and self._idle():
            self._refuse(408, "request_timeout",
                         f"request: the headers did not arrive within {self.timeout_s:g} s",
                         "The request took too long to arrive.")
            return
        # Nothing sent at all (not worth a log line: browsers open connections ahead of
        # need), or a body too slow for an app already handling its request: closed without
        # an answer (the app sees a disconnect).
        if phase == "body" or self._head_bytes:
            self._log(None, "request_timeout",
                      f"{phase}: did not arrive within {self.timeout_s:g} s; closed")
        self.transport.close()

    def _head_too_large(self) -> None:
        cap = self.max_head_bytes
        size = f"{cap // 1024} KiB" if cap % 1024 == 0 else f"{cap} bytes"
        if not self._idle():        # a response is being written: 431 cannot go in its middle
            self._log(None, "request_header_fields_too_large", f"headers: over {size}; closed")
            self.transport.close()
            return
        self._refuse(431, "request_header_fields_too_large",
                     f"headers: the request line and headers cannot be larger than {size}",
                     f"The request line and headers are larger than {size}.")

    def _idle(self) -> bool:
        """No response is being written on this connection."""
        return self.cycle is None or self.cycle.response_complete

    # Answers written straight to the socket: the app never sees these requests.
    def _refuse(self, status: int, name: str, error: str, message: str,
                headers: list[tuple[bytes, bytes]] = ()) -> None:
        rid = uuid.uuid4().hex
        body = json.dumps({"id": rid, "name": name, "errors": [error],
                           "message": message}).encode()
        head = [STATUS_LINE[status]]
        for key, value in [*self.server_state.default_headers, *headers,
                           (b"content-type", b"application/json"),
                           (b"content-length", str(len(body)).encode()),
                           (b"connection", b"close"), (b"x-request-id", rid.encode()),
                           *SECURITY_HEADERS, API_CSP]:
            head += [key, b": ", value, b"\r\n"]
        self._disarm()
        self.transport.write(b"".join(head) + b"\r\n" + body)
        self.transport.close()
        self._log(status, name, error, rid)

    def _log(self, status: int | None, name: str, detail: str, rid: str | None = None) -> None:
        # Never the bytes received: they are whatever the client chose to send.
        if access_log.isEnabledFor(logging.INFO):      # a flood of refusals costs little
            access_log.info(kv(request_id=rid, event="refused", status=status, error=name,
                               detail=detail, head_bytes=self._head_bytes or None,
                               client=(self.client or ("-",))[0]))


def uvicorn_config(app, settings, **overrides) -> uvicorn.Config:
    """The uvicorn.Config that serves `app` with the connection limits of `settings`; the
    keyword arguments are passed on (and win)."""
    protocol = type("GuardedHttpProtocol", (GuardedHttpProtocol,), {
        "max_head_bytes": settings.max_header_kb * 1024,
        "timeout_s": settings.request_timeout_s,
        "max_connections": fit_to_open_files(settings.max_connections,
                                              "max_connections" in settings.model_fields_set),
    })
    options = dict(host=settings.host, port=settings.port, http=protocol,
                   ws="none")                  # the API has no WebSockets: no unguarded path
    options.update(overrides)
    return uvicorn.Config(app, **options)
