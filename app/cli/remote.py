"""`svd-server generate --server URL`: the same generations through a running svd-server.

POST every image first, then poll their results together every 0.5 s and save each video.
An MP4 (-o NAME.mp4, or a folder) is asked for as the Stability API does: no output_format
field, `accept: video/*`. A .webm or .gif sends `output_format` (an svd-server extension) and
polls with that format's media type (video/webm, image/gif); a server that answers with
another type (one without the extension sends an MP4) is an error, never a mislabelled file.
The 202 body may carry `stage`, `progress`, `queue_position` and `eta_seconds`; they are
shown when present. httpx is imported only here, when a server is named.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from app.cli.console import CODEC_NAMES, Bar, Failed, video_format, write_atomic
from inference.base import FORMATS

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


def _httpx():
    try:
        import httpx
    except ImportError:
        raise Failed("--server needs httpx: pip install httpx", 2) from None
    return httpx


def server_sizes(server: str, settings):
    """(`settings` with the server's allowed sizes, what to call them) for --fit, from its
    public GET /playground/config.json; a server that does not say them gets a warning and
    this machine's SVD_ALLOWED_SIZES."""
    httpx = _httpx()
    base = server.rstrip("/")
    try:
        r = httpx.get(f"{base}/playground/config.json", timeout=httpx.Timeout(30, connect=10))
        body = r.json() if r.status_code == 200 else {}
        sizes = tuple((int(w), int(h)) for w, h in body["allowed_sizes"])
        update = {"allowed_sizes": sizes, "max_pixels": int(body["max_pixels"])}
    except httpx.HTTPError as exc:
        raise Failed(f"cannot reach {base}: {exc}") from None
    except (ValueError, KeyError, TypeError):
        print(f"WARNING: {base} does not say which sizes it allows; fitting images to "
              "SVD_ALLOWED_SIZES as set here", file=sys.stderr, flush=True)
        return settings, "SVD_ALLOWED_SIZES"
    return settings.model_copy(update=update), "the server's SVD_ALLOWED_SIZES"


@dataclass
class _Job:
    index: int
    name: str
    data: bytes
    out: Path
    id: str = ""
    next_try: float = 0.0         # not before then: the next POST (refused for now) or GET
    stage: tuple | None = None    # the last 202 body's (phase, progress, detail)

    @property
    def format(self) -> str:
        return video_format(self.out)


def generate_remote(server: str, args, settings, items, bar: Bar, report=None) -> list[str]:
    """POST each (name, data, out) of `items`, then poll them all (every 0.5 s; queued ones
    less often) and save each video (in the format `out`'s suffix names) as it comes,
    within --timeout; returns the server's seeds.
    Without `report`, the first error raises Failed (one image). With it, `report(index,
    seed, error)` as each ends and the others go on; a full queue (429, 503) only delays a
    POST. No key, an unreachable server or a refused key end it all (Failed)."""
    httpx = _httpx()
    base = server.rstrip("/")
    headers = {"authorization": f"Bearer {_api_key(args, settings)}"}
    form = {"seed": str(args.seed), "cfg_scale": str(args.cfg_scale),
            "motion_bucket_id": str(args.motion_bucket_id)}
    form.update({k: str(v) for k, v in (("frames", args.frames), ("steps", args.steps)) if v})
    deadline = time.monotonic() + args.timeout
    jobs = [_Job(i, name, data, out) for i, (name, data, out) in enumerate(items)]
    waiting, running, seeds = list(jobs), [], [""] * len(jobs)

    def end(job: _Job, seed: str, error: str | None) -> None:
        if error and report is None:
            raise Failed(error)
        seeds[job.index] = seed
        if report is not None:
            report(job.index, seed or None, error)

    with httpx.Client(base_url=base, headers=headers, timeout=httpx.Timeout(120, connect=10)) as http:
        misses, warned = 0, False
        while waiting or running:
            for job in [j for j in waiting if j.next_try <= time.monotonic()]:
                bar.show("uploading", detail=f"{job.name} to {base}" if report else base)
                fields = form if job.format == "mp4" else {**form, "output_format": job.format}
                try:
                    r = http.post("/v2beta/image-to-video", data=fields,
                                  files={"image": (Path(job.name).name, job.data)})
                except httpx.HTTPError as exc:
                    raise Failed(f"cannot reach {base}: {exc}") from None
                if r.status_code in (401, 403):
                    raise Failed(_server_error(r))
                if r.status_code in (429, 503) and report is not None:
                    job.next_try = time.monotonic() + float(r.headers.get("retry-after") or 5)
                    break                                   # the next ones would wait too
                waiting.remove(job)
                if r.status_code != 200:
                    end(job, "", _server_error(r))
                    continue
                try:
                    job.id = r.json()["id"]
                except (ValueError, KeyError, TypeError):
                    raise Failed(f"{base} is not an svd-server (no id in {r.text[:100]!r})"
                                 ) from None
                if "fallback" in r.headers.get("x-svd-model", "") and not warned:
                    warned = True
                    print(f"WARNING: the server runs {r.headers['x-svd-model']}: its videos are "
                          "noise", file=sys.stderr, flush=True)
                if report is None:
                    print(f"generation id: {job.id}", file=sys.stderr, flush=True)
                running.append(job)
            due = [j for j in running if j.next_try <= time.monotonic()]
            answered = False
            for job in due:
                try:
                    r = http.get(f"/v2beta/image-to-video/result/{job.id}", headers={
                        "accept": "video/*" if job.format == "mp4" else FORMATS[job.format]})
                    answered = True
                except httpx.HTTPError as exc:      # a blip must not lose a long generation
                    if misses >= 9:
                        raise Failed(f"lost the server at {base}: {exc}") from None
                    continue
                if r.status_code == 202:
                    job.stage = _stage(r.json())
                    position = r.json().get("queue_position") or 0
                    job.next_try = time.monotonic() + min(5.0, POLL_INTERVAL_S * max(1, position))
                    continue
                running.remove(job)
                if r.status_code != 200:
                    end(job, "", _server_error(r))
                    continue
                if job.format != "mp4" and (got := _media_type(r)) != FORMATS[job.format]:
                    want = FORMATS[job.format]
                    end(job, "", f"the server sent {got or 'a result of no stated type'}, not "
                                 f"{want}: it does not make {CODEC_NAMES[job.format]} videos "
                                 "(output_format); name the file .mp4")
                    continue
                bar.show("saving", detail=f"{job.name}: {len(r.content)} bytes" if report
                         else f"{len(r.content)} bytes")
                try:
                    write_atomic(job.out, lambda p: Path(p).write_bytes(r.content))
                except OSError as exc:
                    end(job, "", f"cannot write {job.out}: {exc.strerror or exc}")
                    continue
                if args.frames:
                    _warn_if_frames_ignored(job.out, args.frames)
                end(job, r.headers.get("seed", "?"), None)
            misses = 0 if answered or not due else misses + 1
            shown = next((j for j in running if j.stage), None)
            if shown is not None:
                stage, progress, detail = shown.stage
                if report is not None:
                    detail = f"{shown.name}: {detail}".rstrip(": ")
                bar.show(stage, progress, 1.0 if progress is not None else None, detail)
            if (waiting or running) and time.monotonic() > deadline:
                for job in running + waiting:
                    end(job, "", f"no result after {args.timeout:g} s" + (
                        f"; the id is {job.id}" if job.id else "; not submitted (queue full)"))
                break
            if waiting or running:
                time.sleep(POLL_INTERVAL_S)
    return seeds


def _media_type(response) -> str:
    return response.headers.get("content-type", "").split(";", 1)[0].strip().lower()


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
