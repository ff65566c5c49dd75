"""Input images: sniff the format from the bytes, read the size from the header, decode.

The format is never taken from a filename or a content-type (clients send wrong ones). The
size is read from the header before any pixel is decoded, so an image that claims to be huge
is refused without allocating memory for it.
"""
from __future__ import annotations

import io
import re
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"

# JPEG start-of-frame markers that carry the image size (all SOFn except DHT, JPG, DAC).
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageError(ValueError):
    """The bytes are not an image we accept; the message says why, for the client."""


@dataclass(frozen=True)
class ImageInfo:
    format: str     # "png" | "jpeg"
    width: int
    height: int


def sniff_format(data: bytes) -> str:
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    raise ImageError("must be a PNG or JPEG image")


def _png_size(data: bytes) -> tuple[int, int]:
    # Signature, then the IHDR chunk: length(4) type(4) width(4) height(4).
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageError("is not a valid PNG (missing IHDR)")
    return struct.unpack(">II", data[16:24])


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ImageError("is not a valid JPEG (bad marker)")
        marker = data[i + 1]
        if marker == 0xFF:          # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:   # no length field
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if length < 2:
            raise ImageError("is not a valid JPEG (bad segment length)")
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                break
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        if marker == 0xDA:          # start of scan before any frame header
            break
        i += 2 + length
    raise ImageError("is not a valid JPEG (no frame header)")


def probe(data: bytes) -> ImageInfo:
    """Format and size from the header alone; cheap and safe on hostile input."""
    fmt = sniff_format(data)
    width, height = _png_size(data) if fmt == "png" else _jpeg_size(data)
    if width == 0 or height == 0:
        raise ImageError("has a zero width or height")
    return ImageInfo(fmt, width, height)


def decode_rgb(data: bytes, info: ImageInfo) -> Image.Image:
    """Fully decode (so a truncated file fails here, not later) and convert to RGB.

    Call only after `probe` and a size check: the size is trusted to be small by then.
    EXIF orientation is applied, as every image viewer does: a portrait photo stored
    sideways comes out portrait, so its final size may be the header's, swapped.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=["PNG" if info.format == "png" else "JPEG"])
            if img.size != (info.width, info.height):
                raise ImageError("header and image data disagree about the size")
            img.load()
    except ImageError:
        raise
    except Exception as exc:  # PIL raises many types for broken files
        raise ImageError(f"could not be decoded ({_short(exc)})") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:        # a broken EXIF block: keep the pixels as stored
        pass
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels become white, as an image viewer would show them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def _short(exc: Exception) -> str:
    """PIL's message for the client, without object addresses or other internals."""
    text = _OBJECT_REPR.sub("the data", str(exc)).strip() or type(exc).__name__
    return text[:120]
