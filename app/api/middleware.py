"""One log line per request, and the x-svd-model header on every response."""
from __future__ import annotations

import logging
import time

log = logging.getLogger("svd.access")


class RequestLogMiddleware:
    def __init__(self, app, model_label):
        self.app = app
        self.model_label = model_label

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                label = self.model_label()
                if label:
                    message.setdefault("headers", [])
                    message["headers"] = list(message["headers"]) + [
                        (b"x-svd-model", label.encode("latin-1", "replace"))]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            log.info('%s %s %d %.1fms', scope["method"], scope["path"][:200], status[0],
                     (time.perf_counter() - start) * 1000)
