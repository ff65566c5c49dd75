"""Webhooks: when a generation finishes, POST a signed JSON event to the URL its request named.

Signature header (verify it before trusting the body):

    svd-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>

The secret is SVD_WEBHOOK_SECRET, or one generated into $SVD_DATA_DIR/webhook_secret. Targets
must match SVD_WEBHOOK_ALLOW (none by default). Deliveries are retried with exponential
backoff; their state is kept on the job, so the housekeeping loop re-sends those that a crash
interrupted (at least once; receivers de-duplicate by the `svd-event-id` header).
"""
from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import logging
import queue
import secrets
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from app.keys import read_or_create_secret
from app.logs import kv

log = logging.getLogger(__name__)
SECRET_FILE = "webhook_secret"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, header: str | None, body: bytes, tolerance_s: int = 300) -> bool:
    """What a receiver runs: the documented check, in Python."""
    if not isinstance(header, str):           # a missing header
        return False
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), f"t={timestamp},v1={parts.get('v1', '')}")


def host_allowed(url: str, allow: list[str]) -> bool:
    """http(s) URLs whose host (or host:port) matches an SVD_WEBHOOK_ALLOW pattern."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
        return False
    host = parts.hostname.lower()
    candidates = {host} | ({f"{host}:{port}"} if port else set())
    return any(fnmatch.fnmatchcase(c, p.lower()) for c in candidates for p in allow)


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
    if job.state.value == "succeeded":
        event.update(finish_reason=job.finish_reason or "SUCCESS", seed=job.seed)
    elif job.error:
        event["error"] = job.error[:200]
    return json.dumps(event, separators=(",", ":")).encode()


class WebhookSender:
    """One thread that delivers, with retries; jobs come in by id."""

    def __init__(self, store, secret: bytes, metrics=None, attempts: int = 5,
                 base_delay_s: float = 2.0, timeout_s: float = 10.0):
        self.store = store
        self.secret = secret
        self.metrics = metrics
        self.attempts = attempts
        self.base_delay = base_delay_s
        self.timeout = timeout_s
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)

    def start(self) -> "WebhookSender":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        self._thread.join(5)

    def submit(self, job_id: str) -> None:
        self._queue.put(job_id)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
            while not self._stop.is_set():
                job_id = self._queue.get()
                if job_id is None:
                    return
                try:
                    self._deliver(client, job_id)
                except Exception:              # never let one delivery stop the others
                    log.exception("webhook delivery for job %s broke", job_id)

    def _deliver(self, client, job_id: str) -> None:
        job = self.store.get(job_id)
        if job is None or not job.webhook_url or job.webhook_status != "pending":
            return
        body = event_body(job)
        for attempt in range(1, self.attempts + 1):
            status, error = None, None
            try:
                r = client.post(job.webhook_url, content=body, headers={
                    "content-type": "application/json", "svd-event-id": job.id,
                    "svd-signature": sign(self.secret, int(time.time()), body)})
                status = r.status_code
            except Exception as exc:          # noqa: BLE001 - network errors are retried
                error = type(exc).__name__
            ok = status is not None and 200 <= status < 300
            log.info(kv(job=job_id, event="webhook", attempt=attempt, status=status, error=error,
                        outcome="delivered" if ok else "retry"))
            if ok:
                self._record(job_id, "delivered", attempt)
                return
            if self._stop.wait(self.base_delay * 2 ** (attempt - 1)):
                return                        # shutting down: housekeeping re-sends it
        self._record(job_id, "failed", self.attempts)

    def _record(self, job_id: str, outcome: str, attempts: int) -> None:
        self.store.set_webhook_status(job_id, outcome, attempts)
        if self.metrics is not None:
            self.metrics.webhooks.labels(outcome).inc()
