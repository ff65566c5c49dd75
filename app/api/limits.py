"""Per-key limit on starting generations: a sliding window, in this process's memory.

With several API processes behind a load balancer each enforces the limit on its own share of
the traffic (see docs/operations.md). No block beyond the window: a client is refused only
while it has `limit` starts in the last `window` seconds.
"""
from __future__ import annotations

import threading
import time
from collections import deque


class RateLimiter:
    def __init__(self, limit: int, window_s: float, clock=time.monotonic):
        self.limit = limit
        self.window = window_s
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> float | None:
        """Record a start for `key`. None if allowed; else seconds until one is allowed."""
        now = self.clock()
        with self._lock:
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                return hits[0] + self.window - now
            hits.append(now)
            if len(self._hits) > 10_000:        # forget idle keys; bounded memory
                self._hits = {k: v for k, v in self._hits.items() if v and v[-1] > now - self.window}
            return None
