"""Webhooks: when a generation finishes, POST a signed JSON event to the URL its request named.

Signature header (verify it before trusting the body):

    svd-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>

The secret is SVD_WEBHOOK_SECRET, or one generated into $SVD_DATA_DIR/webhook_secret. Targets
must match SVD_WEBHOOK_ALLOW (none by default), checked when the request names the URL and
again before delivering. Each target (scheme://host:port) has its own queue, so a target that
is down delays only its own events. Deliveries are retried with exponential backoff; their
state is kept on the job, so the housekeeping loop re-sends those that a crash interrupted
(at least once; receivers de-duplicate by the `svd-event-id` header).
"""
from __future__ import annotations

import fnmatch
import hashlib
import heapq
import hmac
import ipaddress
import itertools
import json
import logging
import re
import secrets
import threading
import time
from collections import deque
from pathlib import Path

import httpx

from app.jobs.model import JobState, WebhookStatus
from app.keys import read_or_create_secret
from app.logs import kv

log = logging.getLogger(__name__)
SECRET_FILE = "webhook_secret"
DEFAULT_PORTS = {"http": 80, "https": 443}
_AUTHORITY = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)")     # RFC 3986, as httpx splits it
_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MAC = re.compile(r"[0-9a-f]{64}")


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, header: str | None, body: bytes, tolerance_s: int = 300) -> bool:
    """What a receiver runs: the documented check, in Python."""
    if not isinstance(header, str):           # a missing header
        return False
    fields = {}
    for item in header.split(","):
        name, eq, value = item.partition("=")
        if not eq:
            return False
        fields[name] = value
    t, mac = fields.get("t", ""), fields.get("v1", "")
    if not (t.isascii() and t.isdigit() and len(t) <= 12 and _MAC.fullmatch(mac)):
        return False
    timestamp = int(t)
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, mac)


def parse_url(url: object) -> httpx.URL | None:
    """The URL as the HTTP client will send it, or None when it breaks a rule: http or https;
    no user name or password (not even an empty one); a host made of letters, digits, hyphens
    and dots (a DNS name, IDNs as punycode) or a dotted-quad IPv4 address; a port in 1-65535;
    no whitespace or control character anywhere."""
    if not isinstance(url, str) or any(c.isspace() or not c.isprintable() for c in url):
        return None
    authority = _AUTHORITY.match(url)
    if authority is None or "@" in authority.group(1):
        return None
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii").lower()
    except (httpx.InvalidURL, ValueError, TypeError):
        return None
    if parsed.scheme not in DEFAULT_PORTS or parsed.userinfo or not _host_ok(host) \
            or not (parsed.port is None or 0 < parsed.port < 65536):
        return None
    return parsed


def _host_ok(host: str) -> bool:
    labels = host.split(".")
    if not host or len(host) > 253:
        return False
    if labels[-1][:1].isdigit():              # no TLD starts with a digit: an address, and
        try:                                  # only the canonical form (not 127.1 nor 0x7f.1)
            ipaddress.IPv4Address(host)
            return True
        except ValueError:
            return False
    return all(_HOST_LABEL.fullmatch(label) for label in labels)


def target_of(url: httpx.URL) -> str:
    """scheme://host:port: what deliveries are queued by, and all that logs show of a URL."""
    host = url.raw_host.decode("ascii").lower()
    return f"{url.scheme}://{host}:{url.port or DEFAULT_PORTS[url.scheme]}"


def allowed_url(url: object, allow: list[str]) -> httpx.URL | None:
    """`parse_url(url)` when its host, or host:port, matches an SVD_WEBHOOK_ALLOW pattern (the
    port being the scheme's default when the URL names none); else None."""
    parsed = parse_url(url)
    if parsed is None:
        return None
    host = parsed.raw_host.decode("ascii").lower()
    candidates = (host, f"{host}:{parsed.port or DEFAULT_PORTS[parsed.scheme]}")
    if any(fnmatch.fnmatchcase(c, p.lower()) for c in candidates for p in allow):
        return parsed
    return None


def host_allowed(url: object, allow: list[str]) -> bool:
    """What a request's `webhook_url` must pass: see `parse_url` and `allowed_url`."""
    return allowed_url(url, allow) is not None


def load_secret(configured: str, data_dir: Path) -> bytes:
    if configured:
        return configured.encode()
    secret, _ = read_or_create_secret(data_dir / SECRET_FILE, lambda: secrets.token_hex(32))
    return secret.encode()


def resend_webhooks(store, sender: "WebhookSender", grace_s: float = 120.0) -> int:
    """Deliveries a crash interrupted: finished jobs still `pending` after `grace_s`."""
    with store.exclusive("svd-webhooks") as mine:
        if not mine:
            return 0
        ids = store.pending_webhooks(time.time() - grace_s)
    for job_id in ids:
        sender.submit(job_id)
    return len(ids)


def event_body(job) -> bytes:
    event = {"type": f"generation.{job.state.value}", "id": job.id, "status": job.state.value}
    if job.state in (JobState.SUCCEEDED, JobState.CONTENT_FILTERED):   # a video to fetch
        event.update(finish_reason=job.finish_reason or "SUCCESS", seed=job.seed)
    elif job.error:
        event["error"] = job.error[:200]
    return json.dumps(event, separators=(",", ":")).encode()


class _Delivery:
    """One job's event on its way to one target."""

    __slots__ = ("job_id", "url", "target", "body", "attempt")

    def __init__(self, job_id: str, url: httpx.URL, body: bytes):
        self.job_id, self.url, self.body, self.attempt = job_id, url, body, 0
        self.target = target_of(url)


class WebhookSender:
    """Delivers events on a few threads, with retries; jobs come in by id (`submit`).

    Each target (scheme://host:port) has its own queue and at most one attempt in flight, so a
    target that is down or slow holds back only its own events. A failed attempt is scheduled
    again after its backoff instead of being waited for, so meanwhile the threads serve other
    targets; after the last attempt the delivery is marked failed at once. `threads` bounds
    the attempts in flight, each to a different target, and targets with events due take turns.
    """

    def __init__(self, store, secret: bytes, metrics=None, *, allow: list[str], attempts: int = 5,
                 base_delay_s: float = 2.0, timeout_s: float = 10.0, threads: int = 8):
        self.store = store
        self.secret = secret
        self.metrics = metrics
        self.allow = list(allow)              # checked again at delivery: the list may have shrunk
        self.attempts = attempts
        self.base_delay = base_delay_s
        self.timeout = timeout_s
        self._cond = threading.Condition()
        self._incoming: deque[str] = deque()                       # job ids not looked at yet
        self._jobs: set[str] = set()                               # taken in, not done with
        self._later: list[tuple[float, int, _Delivery]] = []       # heap: (monotonic due, seq, ·)
        self._due: dict[str, deque[_Delivery]] = {}                # by target, in turn order
        self._busy: set[str] = set()                               # targets with one in flight
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"webhooks-{i}", daemon=True)
                         for i in range(threads)]

    def start(self) -> "WebhookSender":
        # httpx logs each request at INFO with the whole URL, query string included: a
        # receiver's token would land in our logs. Our own lines show scheme://host:port.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Returns within 5 s. Events not delivered yet stay `pending` on their jobs, and the
        housekeeping loop sends them again after a restart."""
        with self._cond:
            self._stop.set()
            self._cond.notify_all()
        deadline = time.monotonic() + 5
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def submit(self, job_id: str) -> None:
        with self._cond:
            self._incoming.append(job_id)
            self._cond.notify()

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
            while (work := self._next()) is not None:
                taking_in = isinstance(work, str)
                job_id, target = (work, None) if taking_in else (work.job_id, work.target)
                again = None
                try:
                    again = self._take_in(work) if taking_in else self._attempt(client, work)
                except Exception:              # never let one delivery stop the others
                    log.exception(kv(job=job_id, event="webhook", outcome="error"))
                with self._cond:
                    self._busy.discard(target)
                    if again is None or self._stop.is_set():
                        self._jobs.discard(job_id)
                    else:
                        heapq.heappush(self._later, (again[0], next(self._seq), again[1]))
                    self._cond.notify()

    def _next(self) -> "str | _Delivery | None":
        """Waits for the next thing to do: a job id to look at, or a due delivery to a target
        with nothing in flight. None once stopping."""
        with self._cond:
            while not self._stop.is_set():
                while self._incoming:
                    job_id = self._incoming.popleft()
                    if job_id not in self._jobs:   # else on its way (housekeeping re-sent it)
                        self._jobs.add(job_id)
                        return job_id
                now = time.monotonic()
                while self._later and self._later[0][0] <= now:
                    delivery = heapq.heappop(self._later)[2]
                    self._due.setdefault(delivery.target, deque()).append(delivery)
                for target in self._due:
                    if target not in self._busy:
                        waiting = self._due.pop(target)
                        delivery = waiting.popleft()
                        if waiting:                # to the back of the line: targets take turns
                            self._due[target] = waiting
                        self._busy.add(target)
                        return delivery
                self._cond.wait(self._later[0][0] - now if self._later else None)
            return None

    def _take_in(self, job_id: str) -> "tuple[float, _Delivery] | None":
        job = self.store.get(job_id)
        if job is None or not job.webhook_url or job.webhook_status != WebhookStatus.PENDING:
            return None
        url = allowed_url(job.webhook_url, self.allow)
        if url is None:                       # e.g. the target left SVD_WEBHOOK_ALLOW since
            parsed = parse_url(job.webhook_url)
            log.warning(kv(job=job_id, event="webhook", outcome="refused",
                           target=target_of(parsed) if parsed is not None else "invalid"))
            self._record(job_id, WebhookStatus.FAILED, 0)
            return None
        return time.monotonic(), _Delivery(job_id, url, event_body(job))

    def _attempt(self, client: httpx.Client,
                 delivery: _Delivery) -> "tuple[float, _Delivery] | None":
        """One POST. Returns when and what to try next, or None when the job is done with."""
        delivery.attempt += 1
        status, error = None, None
        try:
            r = client.post(delivery.url, content=delivery.body, headers={
                "content-type": "application/json", "svd-event-id": delivery.job_id,
                "svd-signature": sign(self.secret, int(time.time()), delivery.body)})
            status = r.status_code
        except Exception as exc:              # noqa: BLE001 - network errors are retried
            error = type(exc).__name__
        ok = status is not None and 200 <= status < 300
        last = ok or delivery.attempt >= self.attempts
        outcome = (WebhookStatus.DELIVERED if ok else WebhookStatus.FAILED) if last else None
        log.info(kv(job=delivery.job_id, event="webhook", target=delivery.target,
                    attempt=delivery.attempt, status=status, error=error,
                    outcome=outcome.value if outcome else "retry"))
        if outcome is None:
            return time.monotonic() + self.base_delay * 2 ** (delivery.attempt - 1), delivery
        self._record(delivery.job_id, outcome, delivery.attempt)
        return None

    def _record(self, job_id: str, outcome: WebhookStatus, attempts: int) -> None:
        self.store.set_webhook_status(job_id, outcome, attempts)
        if self.metrics is not None:
            self.metrics.webhooks.labels(outcome.value).inc()
