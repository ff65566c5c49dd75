"""Every request: an id (x-request-id, echoed), one access log line, metrics, security headers,
the x-svd-model header, and one path per resource (a trailing slash is ignored)."""
from __future__ import annotations

import logging
import time

from app.logs import kv, new_request_id, request_id

log = logging.getLogger("svd.access")

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
# The API serves JSON and MP4 only. The pages (the playground at /, the docs at /docs) send
# policies of their own, which this one does not replace.
API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")


class RequestMiddleware:
    def __init__(self, app, model_label, metrics):
        self.app = app
        self.model_label = model_label
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]
        path = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            # A trailing slash names the same resource. Served in place: a redirect would have
            # to be built from the client's Host header, which an attacker chooses.
            scope = dict(scope, path=path.rstrip("/") or "/")
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = new_request_id(incoming)
        token = request_id.set(rid)

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                headers.extend(SECURITY_HEADERS)
                has_csp = any(name.lower() == API_CSP[0] for name, _ in headers)
                if not has_csp:
                    headers.append(API_CSP)
                label = self.model_label()
                if label:
                    headers.append((b"x-svd-model", label.encode("latin-1", "replace")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            seconds = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, scope["method"], str(status[0])).inc()
            self.metrics.request_seconds.labels(route).observe(seconds)
            log.info(kv(request_id=rid, method=scope["method"], path=scope["path"][:200],
                        route=route, status=status[0], duration_ms=round(seconds * 1000, 1),
                        client=(scope.get("client") or ("-",))[0]))
            request_id.reset(token)
