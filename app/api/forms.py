"""The image-to-video form: read it within the size limit, validate every field.

Numbers arrive as form strings ("42", "1.8"). Anything that is not exactly a number in range
is a 400: "1.5" for an integer is not rounded, "nan", "inf" and "" are refused.
"""
from __future__ import annotations

import re

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request

from app.api.errors import ApiError
from app.config import Settings
from app.jobs.params import MAX_SEED, GenerationParams, check_image
from app.webhooks import host_allowed
from inference.base import FORMATS
from inference.images import ImageError

# ASCII digits and spaces only, as the hosted API: Python's \d and int() also take "١٢".
_INT_RE = re.compile(r"^\s*\+?\d{1,12}\s*$", re.ASCII)
_FLOAT_RE = re.compile(r"^\s*[+-]?(\d{1,12}(\.\d{0,12})?|\.\d{1,12})([eE][+-]?\d{1,3})?\s*$", re.ASCII)
MAX_FIELDS = 64          # unknown fields are ignored, but not without bound
MAX_FRAMES, MAX_STEPS = 128, 200
MAX_FIELD_BYTES = 64 * 1024


def _int_field(value, name: str, lo: int, hi: int, errors: list[str]) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and _INT_RE.match(value) and lo <= int(value) <= hi:
        return int(value)
    errors.append(f"{name}: must be an integer between {lo} and {hi}")
    return None


def _float_field(value, name: str, lo: float, hi: float, errors: list[str]) -> float | None:
    if value is None:
        return None
    if isinstance(value, str) and _FLOAT_RE.match(value) and lo <= float(value) <= hi:
        return float(value)
    errors.append(f"{name}: must be a number between {lo:g} and {hi:g}")
    return None


class _LimitedBody:
    """The request's body stream, failing once more than `limit` bytes arrive — chunked
    bodies too, before the whole body is ever held in memory — and keeping its last bytes,
    to tell a complete multipart body from one cut short."""

    def __init__(self, request: Request, limit: int):
        self.receive = request.receive
        self.limit = limit
        self.received = 0
        self.tail = b""

    async def __call__(self):
        message = await self.receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            self.received += len(chunk)
            if self.received > self.limit:
                raise ApiError.payload_too_large(self.limit)
            self.tail = (self.tail + chunk)[-200:]
        return message


async def read_form(request: Request, settings: Settings):
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError.bad_request("content-type: must be multipart/form-data")
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError.payload_too_large(limit)
    body = _LimitedBody(request, limit)
    try:
        form = await Request(request.scope, body).form(
            max_files=4, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES)
    except (MultiPartException, HTTPException) as exc:
        detail = getattr(exc, "message", None) or getattr(exc, "detail", "")
        raise ApiError.bad_request(f"body: malformed multipart/form-data ({detail})") from None
    except ClientDisconnect:
        raise ApiError.bad_request("body: the client disconnected before the body ended") from None
    except (ValueError, KeyError, AssertionError) as exc:
        raise ApiError.bad_request(f"body: malformed multipart/form-data ({type(exc).__name__})") from None
    boundary = _boundary(content_type)
    if boundary and b"--" + boundary + b"--" not in body.tail:     # (an epilogue may follow)
        await form.close()
        raise ApiError.bad_request("body: the multipart body ends without its closing boundary")
    return form


def _boundary(content_type: str) -> bytes | None:
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            return value.strip().strip('"').encode("latin-1", "replace")
    return None


async def parse_generation(request: Request, settings: Settings) -> GenerationParams:
    form = await read_form(request, settings)
    try:
        errors: list[str] = []
        seed = _int_field(form.get("seed"), "seed", 0, MAX_SEED, errors)
        cfg_scale = _float_field(form.get("cfg_scale"), "cfg_scale", 0, 10, errors)
        motion = _int_field(form.get("motion_bucket_id"), "motion_bucket_id", 1, 255, errors)
        # Extensions beyond the Stability API, all optional.
        frames = _int_field(form.get("frames"), "frames", 1, MAX_FRAMES, errors)
        steps = _int_field(form.get("steps"), "steps", 1, MAX_STEPS, errors)
        fps = _int_field(form.get("fps"), "fps", 1, 60, errors)
        noise = _float_field(form.get("noise_aug_strength"), "noise_aug_strength", 0, 1, errors)
        output_format = form.get("output_format")
        if output_format is not None and output_format not in FORMATS:
            errors.append(f"output_format: must be one of {', '.join(FORMATS)}")
        webhook_url = form.get("webhook_url")
        if webhook_url is not None and (not isinstance(webhook_url, str) or len(webhook_url) > 2000
                                        or not host_allowed(webhook_url, settings.webhook_allow_list)):
            errors.append("webhook_url: must be an http(s) URL whose host is allowed by the "
                          "server (SVD_WEBHOOK_ALLOW)")
        image_part = form.get("image")
        data = b""
        if image_part is None:
            errors.append("image: is required")
        elif not isinstance(image_part, UploadFile):
            errors.append("image: must be sent as a file part")
        else:
            data = await image_part.read()
            if not data:
                errors.append("image: is empty")
        if errors:
            raise ApiError.bad_request(*errors)
    finally:
        await form.close()
    width, height = await _check_image(data, settings)
    return GenerationParams(
        image=data, width=width, height=height, seed=seed or 0,
        cfg_scale=1.8 if cfg_scale is None else cfg_scale,
        motion_bucket_id=127 if motion is None else motion, num_frames=frames, steps=steps,
        output_fps=fps, noise_aug_strength=noise,
        output_format=None if output_format in (None, "mp4") else output_format,
        webhook_url=webhook_url)


async def _check_image(data: bytes, settings: Settings) -> tuple[int, int]:
    try:
        image = await run_in_threadpool(check_image, data, settings)
    except ImageError as exc:
        raise ApiError.bad_request(f"image: {exc}") from None
    return image.size
