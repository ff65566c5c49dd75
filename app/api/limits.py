"""Per-key limit on starting generations: a sliding window, in this process's memory.

With several API processes behind a load balancer each enforces the limit on its own share of
the traffic (see docs/operations.md). No block beyond the window: a client is refused only
while it has `limit` starts in the last `window` seconds.

Only generations that start count. A request takes a reservation before its body is read
(`reserve`), so a key already at its limit is refused cheaply, and so concurrent requests of
one key cannot together pass the limit: reservations in flight hold their slots. The request
then either starts its generation (`keep`: it counts from that moment, as a start) or is
refused — 400, 413, queue or storage full, shutting down, a dropped connection — and gives
the slot back (`release`: it never counted). A plain check-then-record pair would let a burst
of N concurrent requests all pass the check before any of them recorded; reservations bound
a burst by the limit itself.
"""
from __future__ import annotations

import threading
import time
from collections import deque


class Reservation:
    """A slot held for one request of `key`. `wait` is None when granted; otherwise the
    request is refused and `wait` says in how many seconds one may be granted."""
    __slots__ = ("key", "wait", "_open")

    def __init__(self, key: str, wait: float | None):
        self.key = key
        self.wait = wait
        self._open = wait is None       # held: keep or release it exactly once


class _Bucket:
    __slots__ = ("starts", "pending")

    def __init__(self):
        self.starts: deque[float] = deque()     # when kept reservations started, oldest first
        self.pending = 0                        # reservations granted, neither kept nor released


class RateLimiter:
    def __init__(self, limit: int, window_s: float, clock=time.monotonic):
        self.limit = limit
        self.window = window_s
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def reserve(self, key: str) -> Reservation:
        """Hold a slot for a start of `key`, or say how long to wait (`Reservation.wait`).
        Slots held count against the limit until kept or released."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.setdefault(key, _Bucket())
            starts = bucket.starts
            while starts and starts[0] <= now - self.window:
                starts.popleft()
            over = len(starts) + bucket.pending - self.limit
            if over >= 0:
                # When a slot frees if those in flight all start now: with none in flight,
                # when the oldest start leaves the window.
                wait = starts[over] + self.window - now if over < len(starts) else self.window
                return Reservation(key, wait)
            bucket.pending += 1
            if len(self._buckets) > 10_000:     # forget idle keys; bounded memory
                self._buckets = {k: b for k, b in self._buckets.items()
                                 if b.pending or (b.starts and b.starts[-1] > now - self.window)}
            return Reservation(key, None)

    def keep(self, reservation: Reservation) -> None:
        """The generation started: it counts from now, for `window` seconds."""
        self._close(reservation, count=True)

    def release(self, reservation: Reservation) -> None:
        """The request was refused before it started anything: it does not count. A refused
        reservation, or one already kept or released, is left as it is."""
        self._close(reservation, count=False)

    def hit(self, key: str) -> float | None:
        """Record a start for `key` at once. None if allowed; else seconds until one is allowed."""
        reservation = self.reserve(key)
        if reservation.wait is None:
            self.keep(reservation)
        return reservation.wait

    def _close(self, reservation: Reservation, count: bool) -> None:
        now = self.clock()
        with self._lock:
            if not reservation._open:
                return
            reservation._open = False
            bucket = self._buckets.setdefault(reservation.key, _Bucket())
            bucket.pending = max(0, bucket.pending - 1)
            if count:
                bucket.starts.append(now)       # the clock is monotonic: still oldest first
