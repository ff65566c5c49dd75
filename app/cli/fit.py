"""`svd-server generate --fit`: bring an image to an allowed size before it is sent or used.

The server refuses any size not in SVD_ALLOWED_SIZES; the CLI instead scales the image (after
its EXIF orientation, as the server applies it) to the allowed size nearest in aspect ratio,
centre-cropping the overflow (`crop`) or padding with black (`pad`). An allowed image is
passed on untouched; a fitted one as PNG bytes, so both go through the usual checks.
"""
from __future__ import annotations

import io
import math

from PIL import Image, ImageOps

from app.config import Settings
from inference.images import decode_rgb, probe

MODES = ("crop", "pad", "none")
PAD_COLOUR = (0, 0, 0)


def target_size(width: int, height: int, settings: Settings) -> tuple[int, int]:
    """The allowed size for a `width`x`height` image: the listed one nearest in aspect ratio
    (on a tie the squarer, then the nearest in area: 1200x900 gets 768x768 of the Stability
    sizes); with SVD_ALLOWED_SIZES=any, the multiple-of-64 size nearest the image's own,
    scaled down to max_pixels if need be."""
    aspect = math.log(width / height)
    if not settings.any_size:
        return min(settings.allowed_sizes, key=lambda s: (
            round(abs(math.log(s[0] / s[1]) - aspect), 9), round(abs(math.log(s[0] / s[1])), 9),
            abs(math.log(s[0] * s[1] / (width * height)))))
    scale = min(1.0, math.sqrt(settings.max_pixels / (width * height)))
    w, h = width * scale / 64, height * scale / 64
    options = [(64 * max(1, a), 64 * max(1, b)) for a in {math.floor(w), math.ceil(w)}
               for b in {math.floor(h), math.ceil(h)}]
    options = [s for s in options if s[0] * s[1] <= settings.max_pixels] or [(64, 64)]
    return min(options, key=lambda s: (abs(math.log(s[0] / s[1]) - aspect), -s[0] * s[1]))


def fit_image(data: bytes, settings: Settings, mode: str, name: str = "image",
              sizes_from: str = "SVD_ALLOWED_SIZES") -> tuple[bytes, str | None]:
    """(bytes to use, the line saying what was done, or None when nothing was). `data` comes
    back as it is with `none` or when its size is allowed; ImageError for a broken file.
    `sizes_from` names where `settings`' sizes come from, for that line."""
    if mode == "none":
        return data, None
    info = probe(data)
    image = decode_rgb(data, info)      # EXIF orientation applied, as the server does
    w, h = image.size
    if settings.size_allowed(w, h, exact=True):
        return data, None
    size = target_size(w, h, settings)
    if mode == "crop":
        fitted = ImageOps.fit(image, size, Image.Resampling.LANCZOS)
    else:
        fitted = ImageOps.pad(image, size, Image.Resampling.LANCZOS, color=PAD_COLOUR)
    buf = io.BytesIO()
    fitted.save(buf, format="PNG")
    turned = " (turned by its EXIF orientation)" if (w, h) != (info.width, info.height) else ""
    rule = (f"{sizes_from}=any, at most {settings.max_pixels} pixels" if settings.any_size
            else sizes_from)
    done = "cropped" if mode == "crop" else "padded"
    return buf.getvalue(), f"{name}: {w}x{h}{turned} {done} to {size[0]}x{size[1]} ({rule})"
