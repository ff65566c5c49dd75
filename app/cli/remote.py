"""`svd-server generate --server URL`: the same generation through a running svd-server.

POST the image, poll the result every 0.5 s with `accept: video/*`, save the MP4. The 202
body may carry `stage`, `progress`, `queue_position` and `eta_seconds`; they are shown when
present. httpx is imported only here, when a server is named.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from app.cli.console import Bar, Failed, write_atomic

POLL_INTERVAL_S = 0.5


def _api_key(args, settings) -> str:
    if args.api_key or settings.api_key:
        return (args.api_key or settings.api_key).strip()
    try:
        key = (settings.data_dir / "api_key").read_text().strip()
    except OSError:
        key = ""
    if not key:
        raise Failed("no API key: pass --api-key or set SVD_API_KEY", 2)
    return key


def _server_error(response) -> str:
    try:
        body = response.json()
        what = ((body.get("errors") or [None])[0] or body.get("message") or body
                if isinstance(body, dict) else body)
    except ValueError:
        what = response.text[:200] or response.reason_phrase
    retry = response.headers.get("retry-after")
    return f"server answered {response.status_code}: {what}" + (
        f" (retry after {retry} s)" if retry else "")


def _stage(body: dict) -> tuple[str, float | None, str]:
    """(phase, fraction done or None, detail) from a 202 body; any extra field may be absent."""
    stage = body.get("stage") or "in progress"
    progress = body.get("progress")
    progress = float(progress) if isinstance(progress, (int, float)) else None
    parts = []
    if body.get("queue_position") is not None:
        parts.append(f"position {body['queue_position']} in queue")
        progress = None                   # waiting: a pulsing bar, not "0 %"
    if body.get("step") is not None and body.get("steps"):
        parts.append(f"step {body['step']}/{body['steps']}")
    if progress is not None:
        parts.append(f"{progress:.0%}")
    eta = body.get("eta_seconds")
    if isinstance(eta, (int, float)) and eta >= 1:
        parts.append(f"about {eta:.0f} s left")
    return stage, progress, ", ".join(parts)


def generate_remote(server: str, args, settings, data: bytes, out: Path, bar: Bar) -> str:
    """POST to `server`, poll every 0.5 s, save the MP4; returns the server's seed header."""
    try:
        import httpx
    except ImportError:
        raise Failed("--server needs httpx: pip install httpx", 2) from None
    base = server.rstrip("/")
    headers = {"authorization": f"Bearer {_api_key(args, settings)}"}
    form = {"seed": str(args.seed), "cfg_scale": str(args.cfg_scale),
            "motion_bucket_id": str(args.motion_bucket_id)}
    form.update({k: str(v) for k, v in (("frames", args.frames), ("steps", args.steps)) if v})
    deadline = time.monotonic() + args.timeout
    with httpx.Client(base_url=base, headers=headers, timeout=httpx.Timeout(120, connect=10)) as http:
        bar.show("uploading", detail=base)
        try:
            r = http.post("/v2beta/image-to-video", data=form,
                          files={"image": (Path(args.image).name, data)})
        except httpx.HTTPError as exc:
            raise Failed(f"cannot reach {base}: {exc}") from None
        if r.status_code != 200:
            raise Failed(_server_error(r))
        try:
            job_id = r.json()["id"]
        except (ValueError, KeyError, TypeError):
            raise Failed(f"{base} is not an svd-server (no id in {r.text[:100]!r})") from None
        if "fallback" in r.headers.get("x-svd-model", ""):
            print(f"WARNING: the server runs {r.headers['x-svd-model']}: its videos are noise",
                  file=sys.stderr, flush=True)
        print(f"generation id: {job_id}", file=sys.stderr, flush=True)
        misses = 0
        while True:
            try:
                r = http.get(f"/v2beta/image-to-video/result/{job_id}",
                             headers={"accept": "video/*"})
                misses = 0
            except httpx.HTTPError as exc:          # a blip must not lose a long generation
                misses += 1
                if misses >= 10:
                    raise Failed(f"lost the server at {base}: {exc}") from None
                r = None
            if r is not None and r.status_code == 200:
                break
            if r is not None and r.status_code != 202:
                raise Failed(_server_error(r))
            if r is not None:
                stage, progress, detail = _stage(r.json())
                bar.show(stage, progress, 1.0 if progress is not None else None, detail)
            if time.monotonic() > deadline:
                raise Failed(f"no result after {args.timeout:g} s; the id is {job_id}")
            time.sleep(POLL_INTERVAL_S)
    bar.show("saving", detail=f"{len(r.content)} bytes")
    write_atomic(out, lambda p: Path(p).write_bytes(r.content))
    if args.frames:
        _warn_if_frames_ignored(out, args.frames)
    return r.headers.get("seed", "?")


def _warn_if_frames_ignored(path: Path, wanted: int) -> None:
    try:
        import av
        with av.open(str(path)) as c:
            got = c.streams.video[0].frames
    except Exception:       # noqa: BLE001 - only a hint
        return
    if got and got != wanted:
        print(f"WARNING: asked for {wanted} frames, the server made {got} (it may not "
              "support --frames yet)", file=sys.stderr)
