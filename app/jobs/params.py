"""What a generation request may be, for the API and the CLI alike: its parameters once
validated, the seed range, and the one check of an input image against SVD_ALLOWED_SIZES."""
from __future__ import annotations

import secrets
from dataclasses import dataclass

from PIL import Image

from app.config import Settings
from inference.images import ImageError, decode_rgb, probe

MAX_SEED = 4294967294


@dataclass(frozen=True)
class GenerationParams:
    """A validated request, ready to queue."""
    image: bytes
    width: int
    height: int
    seed: int = 0                 # 0: pick one
    cfg_scale: float = 1.8
    motion_bucket_id: int = 127
    # Optional extensions beyond the Stability API; None: the server's default.
    num_frames: int | None = None
    steps: int | None = None
    output_fps: int | None = None
    noise_aug_strength: float | None = None
    output_format: str | None = None
    webhook_url: str | None = None


def random_seed() -> int:
    return 1 + secrets.randbelow(MAX_SEED)      # 1..4294967294


def check_image(data: bytes, settings: Settings) -> Image.Image:
    """The image decoded to RGB, or ImageError saying why not. The format comes from the
    bytes and the size from the header, checked before anything is decoded (a header that
    claims 30000x30000 costs nothing); the size after EXIF orientation must be allowed too.
    Decoding takes time: call it off an event loop."""
    info = probe(data)
    # Either way round: EXIF orientation may turn the image a quarter.
    if not settings.size_allowed(info.width, info.height):
        raise _refusal(settings, info.width, info.height)
    image = decode_rgb(data, info)
    if not settings.size_allowed(*image.size, exact=True):
        raise _refusal(settings, *image.size)
    return image


def _refusal(settings: Settings, w: int, h: int) -> ImageError:
    if settings.any_size:
        return ImageError(f"dimensions {w}x{h} are not supported; sides must be multiples "
                          f"of 64, at least 64, with at most {settings.max_pixels} pixels")
    listed = ", ".join(f"{a}x{b}" for a, b in settings.allowed_sizes)
    return ImageError(f"dimensions {w}x{h} are not supported; use one of {listed}")
