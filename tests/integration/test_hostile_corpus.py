"""A corpus of hostile inputs, built here in code, against `svd-server serve` as a real process
(real tiny pipeline). Every case must end in a clean 4xx in the Stability error shape, or in a
200 whose video is a real H.264 MP4 of the right size and frame count. Never a 5xx.

Decompression bombs (headers that claim 30000x30000 and more, real PNG/JPEG files that would
inflate to gigabytes) must be refused from the header alone, in well under a second. While the
corpus runs, /healthz is polled every ~50 ms and must always answer 200, and the server's
resident memory must not grow by more than 300 MiB.

The corpus runs once (module fixture); each case is then its own test, so that a failure names
the case, what came back, and the server log lines written while it was handled.
"""
from __future__ import annotations

import io
import re
import struct
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Callable

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers import ServerProcess, inspect_mp4, jpeg_bytes, png_bytes

pytestmark = pytest.mark.slow

# Several keys, used in turn, so that the per-key start rate and queue limits never answer for
# an image; and at most MAX_PENDING jobs in flight (the rest of the corpus waits for them).
KEYS = ("hostile-key-0", "hostile-key-1", "hostile-key-2")
MAX_PENDING = 4
URL = "/v2beta/image-to-video"
FRAMES = 3
MIB = 1024 * 1024
BODY_LIMIT = 10 * MIB                 # SVD_MAX_BODY_MB default
BOMB_MAX_S = 1.0
RSS_GROWTH_MAX = 300 * MIB
SIZES = {(64, 64), (96, 64), (64, 96)}
ENV = {"SVD_MODEL": "tiny", "SVD_API_KEYS": ",".join(KEYS), "SVD_ALLOWED_SIZES": "64x64,96x64,64x96",
       "SVD_NUM_FRAMES": str(FRAMES), "SVD_STEPS": "2"}


# -- PNG by hand ----------------------------------------------------------------------------

PNG_SIG = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def ihdr(w: int, h: int, depth: int = 8, color: int = 2, interlace: int = 0) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, interlace))


def png_raw(w: int, h: int, depth: int, color: int, pixels: np.ndarray) -> bytes:
    """A PNG from a (h, w, channels) array; big-endian samples for 16-bit, filter 0 rows."""
    rows = pixels.astype(">u2" if depth == 16 else np.uint8).reshape(h, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()
    return (PNG_SIG + ihdr(w, h, depth, color) + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))


def noisy_png(w: int = 64, h: int = 64) -> bytes:
    """Incompressible pixels, so that its IDAT is most of the file."""
    rng = np.random.default_rng(7)
    return png_raw(w, h, 8, 2, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def zlib_with_zeros(prefix: bytes, zeros: int) -> bytes:
    """A zlib stream of `prefix` then `zeros` zero bytes. Deflate tops out near 1032:1, so a
    gigabyte still costs a megabyte, but building it costs milliseconds: after a full flush the
    compressor forgets everything, so one compressed MiB of zeros is a block to repeat."""
    block = 1 << 20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [c.compress(prefix), c.flush(zlib.Z_FULL_FLUSH)]
    zero_block = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    assert zero_block == again, "deflate output after a full flush is not repeatable"
    full, rest = divmod(zeros, block)
    out += [zero_block * full, c.compress(bytes(rest)), c.flush()]
    a, b = zlib.adler32(prefix) & 0xFFFF, zlib.adler32(prefix) >> 16
    b = (b + zeros * a) % 65521                      # zeros leave a alone and add a to b
    return b"\x78\xda" + b"".join(out) + struct.pack(">I", (b << 16) | a)


def png_bomb(w: int, h: int, depth: int, color: int) -> bytes:
    """A complete, valid, all-black PNG of w x h: tens of kB to a few MB on the wire, hundreds of
    MB to gigabytes once decoded."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    row = 1 + (w * channels * depth + 7) // 8
    body = (PNG_SIG + ihdr(w, h, depth, color) + chunk(b"IDAT", zlib_with_zeros(b"", row * h))
            + chunk(b"IEND", b""))
    assert len(body) < BODY_LIMIT - 4096
    return body


def png_claiming(w: int, h: int) -> bytes:
    """A valid 64x64 PNG whose IHDR is rewritten to claim w x h (CRC fixed up)."""
    data = noisy_png()
    return PNG_SIG + ihdr(w, h) + data[len(PNG_SIG) + 25:]


def png_chunks(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, type) of each chunk."""
    out, i = [], len(PNG_SIG)
    while i + 8 <= len(data):
        (length,) = struct.unpack(">I", data[i:i + 4])
        out.append((i, data[i + 4:i + 8]))
        i += 12 + length
    return out


def with_bad_crc(data: bytes, kind: bytes) -> bytes:
    for off, k in png_chunks(data):
        if k == kind:
            (length,) = struct.unpack(">I", data[off:off + 4])
            crc_at = off + 8 + length
            return data[:crc_at] + bytes(b ^ 0xFF for b in data[crc_at:crc_at + 4]) + data[crc_at + 4:]
    raise AssertionError(f"no {kind!r} chunk")


def insert_before(data: bytes, kind: bytes, extra: bytes) -> bytes:
    off = next(o for o, k in png_chunks(data) if k == kind)
    return data[:off] + extra + data[off:]


def png_with_chunk(kind: bytes, data: bytes, base: bytes | None = None) -> bytes:
    """A valid 64x64 PNG (or `base`) with one more chunk just before its IDAT."""
    return insert_before(png_bytes() if base is None else base, b"IDAT", chunk(kind, data))


def flip_bytes(data: bytes, start: int, end: int, count: int = 8) -> bytes:
    out = bytearray(data)
    for pos in np.linspace(start, end - 1, count).astype(int):
        out[pos] ^= 0x5A
    return bytes(out)


def idat_span(data: bytes) -> tuple[int, int]:
    off = next(o for o, k in png_chunks(data) if k == b"IDAT")
    (length,) = struct.unpack(">I", data[off:off + 4])
    return off + 8, off + 8 + length


def pil_png(w: int, h: int, mode: str, **save) -> bytes:
    rng = np.random.default_rng(3)
    if mode == "P":
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(
            "P", palette=Image.Palette.ADAPTIVE, colors=16)
    elif mode == "RGBA":
        img = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    elif mode == "LA":
        img = Image.fromarray(rng.integers(0, 256, (h, w, 2), dtype=np.uint8), "LA")
    elif mode == "L":
        img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    elif mode == "1":
        img = Image.fromarray(rng.integers(0, 2, (h, w), dtype=np.uint8) * 255, "L").convert("1")
    else:
        raise ValueError(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG", **save)
    return buf.getvalue()


def png_16bit(w: int, h: int, color: int) -> bytes:
    rng = np.random.default_rng(5)
    channels = 3 if color == 2 else 1
    return png_raw(w, h, 16, color, rng.integers(0, 65536, (h, w, channels), dtype=np.uint16))


def png_interlaced(w: int, h: int) -> bytes:
    """An Adam7-interlaced 8-bit RGB PNG (Pillow reads these but cannot write them)."""
    pixels = np.random.default_rng(11).integers(0, 256, (h, w, 3), dtype=np.uint8)
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
              (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = pixels[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    return PNG_SIG + ihdr(w, h, interlace=1) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


# -- JPEG by hand ---------------------------------------------------------------------------

def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each marker segment up to and including the first SOS header."""
    out, i = [], 2
    while i + 4 <= len(data):
        marker = data[i + 1]
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        out.append((marker, i, i + 2 + length))
        if marker == 0xDA:
            break
        i += 2 + length
    return out


def jpeg_claiming(w: int, h: int, progressive: bool = False) -> bytes:
    data = jpeg_bytes(64, 64, progressive=progressive)
    sof = next(s for m, s, _ in jpeg_segments(data) if m in (0xC0, 0xC2))
    return data[:sof + 5] + struct.pack(">HH", h, w) + data[sof + 9:]


def jpeg_second_sof(w: int, h: int) -> bytes:
    """A 64x64 JPEG with a second frame header, claiming w x h, right after the first."""
    data = jpeg_bytes(64, 64)
    _, s, e = next(seg for seg in jpeg_segments(data) if seg[0] == 0xC0)
    sof = bytearray(data[s:e])
    sof[5:9] = struct.pack(">HH", h, w)
    return data[:e] + bytes(sof) + data[e:]


def gray_jpeg(w: int = 64, h: int = 64, value: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h), value).save(buf, format="JPEG", quality=75)
    return buf.getvalue()


def jpeg_bomb(w: int, h: int) -> bytes:
    """A real, complete grayscale baseline JPEG of w x h, uniform mid-grey. With the standard
    Huffman tables every 8x8 block is DC diff 0 ("00") then EOB ("1010"): 6 bits, so four
    blocks are the three bytes 28 A2 8A and the file is 3/4 of a byte per 64 pixels."""
    assert w % 32 == 0 and h % 8 == 0
    template = gray_jpeg(8, 8, 128)             # its DC is 0 after the level shift
    segs = jpeg_segments(template)
    head = bytearray(template[:segs[-1][2]])
    _, s, _ = next(seg for seg in segs if seg[0] == 0xC0)
    head[s + 5:s + 9] = struct.pack(">HH", h, w)
    return bytes(head) + b"\x28\xa2\x8a" * (w * h // 256) + b"\xff\xd9"


def jpeg_scan_flood(total: int = 9 * MIB) -> bytes:
    """A 64x64 progressive JPEG whose smallest scan is repeated until the file is ~9 MiB:
    hundreds of thousands of scans over the same pixels (a CPU bomb, not a memory one)."""
    data = jpeg_bytes(64, 64, progressive=True)
    scans, i = [], 2
    while data[i + 1] != 0xD9:
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        end = i + 2 + length
        if data[i + 1] == 0xDA:             # entropy data runs to the next real marker
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
            scans.append(data[i:end])
        i = end
    smallest = min(scans, key=len)
    return data[:-2] + smallest * ((total - len(data)) // len(smallest)) + b"\xff\xd9"


def pil_jpeg(w: int, h: int, mode: str, **save) -> bytes:
    rng = np.random.default_rng(9)
    if mode == "CMYK":
        img = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "CMYK")
    elif mode == "L":
        img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    else:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **save)
    return buf.getvalue()


def jpeg_with_orientation(w: int, h: int, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return pil_jpeg(w, h, "RGB", exif=exif.tobytes())


def png_with_exif(w: int, h: int, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(13).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
        buf, format="PNG", exif=exif.tobytes())
    return buf.getvalue()


def jpeg_with_app1(payload: bytes) -> bytes:
    data = jpeg_bytes(96, 64)
    seg = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + seg + data[2:]


def jpeg_scan_span(data: bytes) -> tuple[int, int]:
    return jpeg_segments(data)[-1][2], len(data) - 2


def gif_then_png() -> bytes:
    gif = (b"GIF89a\x40\x00\x40\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff,\x00\x00\x00\x00\x40"
           b"\x00\x40\x00\x00\x02\x02D\x01\x00;")
    return gif + png_bytes(64, 64)


def tiny_zip(name: bytes = b"a.txt", content: bytes = b"hello") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name.decode(), content)
    return buf.getvalue()


# -- multipart by hand ----------------------------------------------------------------------

BOUNDARY = b"hostile7MA4YWxkTrZu0gW"


def part(name: bytes, body: bytes, filename: bytes | None = None,
         ctype: bytes | None = b"application/octet-stream") -> bytes:
    disp = b'Content-Disposition: form-data; name="' + name + b'"'
    if filename is not None:
        disp += b'; filename="' + filename + b'"'
    head = disp + b"\r\n" + (b"Content-Type: " + ctype + b"\r\n" if ctype and filename is not None else b"")
    return b"--" + BOUNDARY + b"\r\n" + head + b"\r\n" + body + b"\r\n"


def multipart(*parts: bytes, close: bool = True) -> bytes:
    return b"".join(parts) + (b"--" + BOUNDARY + b"--\r\n" if close else b"")


def mp_headers(boundary: bytes = BOUNDARY, extra: str = "") -> dict[str, str]:
    return {"content-type": f"multipart/form-data; boundary={boundary.decode()}{extra}"}


def image_part(data: bytes, filename: bytes = b"in.png", ctype: bytes = b"image/png") -> bytes:
    return part(b"image", data, filename, ctype)


def with_png(*parts: bytes) -> bytes:
    """A valid 64x64 PNG image part, then `parts`, then the closing boundary."""
    return multipart(image_part(png_bytes()), *parts)


IMAGE_DISPOSITION = b'Content-Disposition: form-data; name="image"; filename="a.png"'


def exactly(total: int, make: Callable[[int], bytes]) -> bytes:
    """make(pad) for the pad that makes the result exactly `total` bytes long."""
    overhead = len(make(0))
    body = make(total - overhead)
    assert len(body) == total, (len(body), total)
    return body


def padded_png_body(pad: int) -> bytes:
    """A multipart body whose image is a valid 64x64 PNG padded with a private ancillary
    chunk (`prVt`) to fill `pad` bytes."""
    png = png_bytes(64, 64)
    filler = chunk(b"prVt", b"\x00" * max(0, pad - 12)) if pad >= 12 else b""
    return multipart(image_part(insert_before(png, b"IDAT", filler)))


def chunked(body: bytes, size: int = 256 * 1024):
    def gen():
        for i in range(0, len(body), size):
            yield body[i:i + size]
    return gen


# -- the corpus -----------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    group: str                  # bomb | corrupt | format | exif | polyglot | body
    expect: str                 # "400" | "413" | "4xx" | "video" | "either" (4xx or video)
    build: Callable[[], dict]   # -> httpx request kwargs (files/data or content/headers)
    sizes: frozenset = frozenset(SIZES)    # acceptable video sizes when a video comes back
    limit_s: float | None = None           # must be answered within this many seconds


def img(data: bytes, filename: str = "in.png", ctype: str = "image/png", **data_fields) -> dict:
    return {"files": {"image": (filename, data, ctype)}, "data": data_fields}


def raw(body, **headers) -> dict:
    return {"content": body, "headers": headers or mp_headers()}


def C(name, group, expect, build, sizes=None, fast=False, limit_s=None) -> Case:
    return Case(name, group, expect, build, frozenset(sizes or SIZES),
                BOMB_MAX_S if fast else limit_s)


def jpg(data: bytes, filename: str = "a.jpg", ctype: str = "image/jpeg") -> dict:
    return img(data, filename, ctype)


S64, S96x64, S64x96 = {(64, 64)}, {(96, 64)}, {(64, 96)}
IEND = chunk(b"IEND", b"")
GIB = 1 << 30

CASES: list[Case] = [
    # Decompression bombs: refused from the header, before any pixel is decoded.
    C("png-ihdr-claims-30000x30000", "bomb", "400", lambda: img(png_claiming(30000, 30000)), fast=True),
    C("png-ihdr-claims-2^31-1-square", "bomb", "400",
      lambda: img(png_claiming(2**31 - 1, 2**31 - 1)), fast=True),
    C("png-ihdr-claims-2^32-1-square", "bomb", "400",
      lambda: img(png_claiming(2**32 - 1, 2**32 - 1)), fast=True),
    C("png-ihdr-claims-64x1000000", "bomb", "400", lambda: img(png_claiming(64, 1_000_000)), fast=True),
    C("jpeg-sof-claims-30000x30000", "bomb", "400", lambda: jpg(jpeg_claiming(30000, 30000)), fast=True),
    C("jpeg-sof2-claims-65535x65535", "bomb", "400",
      lambda: jpg(jpeg_claiming(65535, 65535, progressive=True)), fast=True),
    C("png-real-20000x20000-1bit-50kB", "bomb", "400", lambda: img(png_bomb(20000, 20000, 1, 0)), fast=True),
    C("png-real-20000x20000-rgb-1GB", "bomb", "400", lambda: img(png_bomb(20000, 20000, 8, 2)), fast=True),
    C("png-real-65535x65535-1bit", "bomb", "400", lambda: img(png_bomb(65535, 65535, 1, 0)), fast=True),
    C("jpeg-real-20000x20000-gray-5MB", "bomb", "400", lambda: jpg(jpeg_bomb(20000, 20000)), fast=True),
    C("jpeg-second-sof-claims-30000x30000", "bomb", "400",
      lambda: jpg(jpeg_second_sof(30000, 30000)), fast=True),
    C("png-64x64-idat-inflates-to-1GiB", "bomb", "either",
      lambda: img(PNG_SIG + ihdr(64, 64) + chunk(b"IDAT", zlib_with_zeros(bytes(193 * 64), GIB)) + IEND),
      S64, fast=True),
    C("png-ztxt-inflates-to-1GiB", "bomb", "either",
      lambda: img(png_with_chunk(b"zTXt", b"Comment\0\0" + zlib_with_zeros(b"", GIB))),
      S64, fast=True),
    C("png-iccp-inflates-to-1GiB", "bomb", "either",
      lambda: img(png_with_chunk(b"iCCP", b"icc\0\0" + zlib_with_zeros(b"", GIB))),
      S64, fast=True),
    # Not a header bomb: 9 MiB to upload and parse, then a real decode of every scan. Bounded
    # by the body limit; it only has to stay cheap.
    C("jpeg-progressive-360k-scans", "cpu", "either", lambda: jpg(jpeg_scan_flood()), S64, limit_s=3.0),

    # Truncated and corrupted. "either" where a decoder may fairly recover.
    C("png-cut-in-half", "corrupt", "400", lambda: img(noisy_png()[:len(noisy_png()) // 2])),
    C("png-header-only", "corrupt", "400", lambda: img(PNG_SIG + ihdr(64, 64))),
    C("png-signature-only", "corrupt", "400", lambda: img(PNG_SIG)),
    C("png-ihdr-cut-short", "corrupt", "400", lambda: img(noisy_png()[:20])),
    C("png-no-iend", "corrupt", "either", lambda: img(noisy_png()[:-12]), S64),
    C("png-idat-bytes-flipped", "corrupt", "either",
      lambda: img(flip_bytes(noisy_png(), *idat_span(noisy_png()))), S64),
    C("png-idat-zlib-header-broken", "corrupt", "400",
      lambda: img(flip_bytes(noisy_png(), idat_span(noisy_png())[0], idat_span(noisy_png())[0] + 2, 2))),
    C("png-bad-crc-ihdr", "corrupt", "400", lambda: img(with_bad_crc(noisy_png(), b"IHDR"))),
    C("png-bad-crc-idat", "corrupt", "either", lambda: img(with_bad_crc(noisy_png(), b"IDAT")), S64),
    C("png-bad-crc-text-chunk", "corrupt", "either",
      lambda: img(with_bad_crc(png_with_chunk(b"tEXt", b"Comment\0hi", noisy_png()), b"tEXt")), S64),
    C("png-bad-crc-iend", "corrupt", "either", lambda: img(with_bad_crc(noisy_png(), b"IEND")), S64),
    C("png-ihdr-bad-depth-and-color", "corrupt", "400",
      lambda: img(PNG_SIG + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 7, 5, 0, 0, 0))
                  + noisy_png()[33:])),
    C("png-chunk-length-2^31", "corrupt", "400",
      lambda: img(insert_before(noisy_png(), b"IDAT", struct.pack(">I", 0x7FFFFFFF) + b"tEXt" + b"x" * 32))),
    C("jpeg-cut-in-half", "corrupt", "400", lambda: jpg(jpeg_bytes()[:len(jpeg_bytes()) // 2])),
    C("jpeg-headers-only", "corrupt", "400", lambda: jpg(jpeg_bytes()[:jpeg_segments(jpeg_bytes())[-1][2]])),
    C("jpeg-first-200-bytes", "corrupt", "400", lambda: jpg(jpeg_bytes()[:200])),
    C("jpeg-no-eoi", "corrupt", "either", lambda: jpg(jpeg_bytes()[:-2]), S64),
    C("jpeg-scan-bytes-flipped", "corrupt", "either",
      lambda: jpg(flip_bytes(jpeg_bytes(), *jpeg_scan_span(jpeg_bytes()), 16)), S64),
    C("jpeg-segment-length-zero", "corrupt", "400",
      lambda: jpg(b"\xff\xd8\xff\xe0\x00\x00" + jpeg_bytes()[2:])),
    C("jpeg-huffman-table-garbage", "corrupt", "either",
      lambda: jpg(flip_bytes(jpeg_bytes(), *next((s + 5, e) for m, s, e in jpeg_segments(jpeg_bytes())
                                                  if m == 0xC4), 6)), S64),

    # Formats and pixel layouts that must all work.
    C("png-rgba", "format", "video", lambda: img(pil_png(64, 64, "RGBA")), S64),
    C("png-rgba-fully-transparent", "format", "video",
      lambda: img(png_bytes(96, 64, "RGBA", (0, 0, 0, 0))), S96x64),
    C("png-rgb-16bit", "format", "video", lambda: img(png_16bit(96, 64, 2)), S96x64),
    C("png-gray-16bit", "format", "video", lambda: img(png_16bit(64, 96, 0)), S64x96),
    C("png-gray-8bit", "format", "video", lambda: img(pil_png(64, 64, "L")), S64),
    C("png-gray-alpha", "format", "video", lambda: img(pil_png(64, 64, "LA")), S64),
    C("png-1bit", "format", "video", lambda: img(pil_png(64, 64, "1")), S64),
    C("png-palette", "format", "video", lambda: img(pil_png(96, 64, "P")), S96x64),
    C("png-palette-transparency", "format", "video",
      lambda: img(pil_png(96, 64, "P", transparency=0)), S96x64),
    C("png-interlaced-adam7", "format", "video", lambda: img(png_interlaced(96, 64)), S96x64),
    C("jpeg-cmyk", "format", "video", lambda: jpg(pil_jpeg(64, 64, "CMYK")), S64),
    C("jpeg-cmyk-progressive", "format", "video",
      lambda: jpg(pil_jpeg(96, 64, "CMYK", progressive=True)), S96x64),
    C("jpeg-progressive", "format", "video", lambda: jpg(pil_jpeg(96, 64, "RGB", progressive=True)), S96x64),
    C("jpeg-grayscale", "format", "video", lambda: jpg(pil_jpeg(64, 96, "L")), S64x96),
    C("jpeg-4:4:4-restart-markers", "format", "video",
      lambda: jpg(pil_jpeg(64, 64, "RGB", subsampling=0, restart_marker_blocks=1)), S64),

    # EXIF orientation, applied as an image viewer does: stored 96x64, shown (and generated) 64x96.
    C("jpeg-96x64-exif-orientation-6", "exif", "video",
      lambda: jpg(jpeg_with_orientation(96, 64, 6)), S64x96),
    C("jpeg-96x64-exif-orientation-3", "exif", "video",
      lambda: jpg(jpeg_with_orientation(96, 64, 3)), S96x64),
    C("jpeg-64x96-exif-orientation-8", "exif", "video",
      lambda: jpg(jpeg_with_orientation(64, 96, 8)), S96x64),
    # Viewers disagree about EXIF in PNG (an eXIf chunk): either way round, but a video.
    C("png-96x64-exif-chunk-orientation-6", "exif", "video",
      lambda: img(png_with_exif(96, 64, 6)), S96x64 | S64x96),
    C("jpeg-96x64-exif-orientation-9-invalid", "exif", "video",
      lambda: jpg(jpeg_with_orientation(96, 64, 9)), S96x64),
    C("jpeg-96x64-exif-garbage", "exif", "video",
      lambda: jpg(jpeg_with_app1(b"Exif\0\0MM\0*\0\0\0\x08\xff\xff" + b"\xa5" * 64)), S96x64),
    C("jpeg-96x64-exif-ifd-offset-out-of-range", "exif", "video",
      lambda: jpg(jpeg_with_app1(b"Exif\0\0II*\0\xff\xff\xff\x7f")), S96x64),

    # Polyglots and lying labels: the format comes from the bytes.
    C("jpeg-in-png-named-part", "polyglot", "video",
      lambda: img(jpeg_bytes(96, 64), "x.png", "image/png"), S96x64),
    C("png-in-jpeg-named-part", "polyglot", "video", lambda: jpg(png_bytes(64, 96), "x.jpg"), S64x96),
    C("png-signature-then-jpeg", "polyglot", "400", lambda: img(PNG_SIG + jpeg_bytes())),
    C("jpeg-then-zip", "polyglot", "either", lambda: jpg(jpeg_bytes() + tiny_zip()), S64),
    C("jpeg-then-html", "polyglot", "either",
      lambda: jpg(jpeg_bytes() + b"<html><script>alert(1)</script></html>", "a.jpg", "text/html"), S64),
    C("png-then-zip-after-iend", "polyglot", "either", lambda: img(png_bytes() + tiny_zip()), S64),
    C("png-html-in-text-chunk", "polyglot", "video",
      lambda: img(png_with_chunk(b"tEXt", b"Comment\0<script>alert(1)</script>")), S64),
    C("gif-header-then-png", "polyglot", "400", lambda: img(gif_then_png(), "a.gif", "image/gif")),
    C("jpeg-with-png-in-app-segment", "polyglot", "video",
      lambda: jpg(jpeg_with_app1(b"XPNG\0" + png_bytes())), S96x64),

    # Bodies and multipart framing.
    C("zero-byte-image", "body", "400", lambda: img(b"")),
    C("body-10MiB-plus-1-content-length", "body", "413",
      lambda: raw(exactly(BODY_LIMIT + 1, padded_png_body))),
    C("body-10MiB-plus-1-chunked", "body", "413",
      lambda: raw(chunked(exactly(BODY_LIMIT + 1, padded_png_body)))),
    C("body-exactly-10MiB-valid-png", "body", "video",
      lambda: raw(exactly(BODY_LIMIT, padded_png_body)), S64),
    C("5000-tiny-fields", "body", "400",
      lambda: raw(with_png(*(part(f"f{i}".encode(), b"x") for i in range(5000))))),
    C("5MiB-text-field", "body", "4xx", lambda: raw(with_png(part(b"note", b"a" * 5 * MIB)))),
    C("5MiB-seed-field", "body", "4xx", lambda: raw(with_png(part(b"seed", b"1" * 5 * MIB)))),
    C("no-closing-boundary", "body", "400", lambda: raw(multipart(image_part(png_bytes()), close=False))),
    C("no-closing-boundary-no-crlf", "body", "400",
      lambda: raw(multipart(image_part(png_bytes()), close=False)[:-2])),
    C("wrong-boundary", "body", "400",
      lambda: raw(multipart(image_part(png_bytes())), **mp_headers(b"someotherboundary"))),
    C("boundary-missing-from-header", "body", "400",
      lambda: raw(multipart(image_part(png_bytes())), **{"content-type": "multipart/form-data"})),
    C("empty-boundary", "body", "400",
      lambda: raw(multipart(image_part(png_bytes())), **{"content-type": "multipart/form-data; boundary="})),
    C("boundary-1000-chars", "body", "4xx",
      lambda: raw(b"--" + b"b" * 1000 + b"\r\n" + IMAGE_DISPOSITION + b"\r\n\r\n" + png_bytes()
                  + b"\r\n--" + b"b" * 1000 + b"--\r\n", **mp_headers(b"b" * 1000))),
    C("headers-only-part", "body", "400",
      lambda: raw(b"--" + BOUNDARY + b"\r\n" + IMAGE_DISPOSITION + b"\r\nContent-Type: image/png\r\n"
                  b"--" + BOUNDARY + b"--\r\n")),
    C("headers-only-part-then-eof", "body", "400",
      lambda: raw(b"--" + BOUNDARY + b"\r\n" + IMAGE_DISPOSITION + b"\r\n\r\n")),
    C("closing-boundary-only", "body", "400", lambda: raw(b"--" + BOUNDARY + b"--\r\n")),
    C("part-without-content-disposition", "body", "400",
      lambda: raw(b"--" + BOUNDARY + b"\r\nContent-Type: image/png\r\n\r\n" + png_bytes()
                  + b"\r\n--" + BOUNDARY + b"--\r\n")),
    C("part-without-name", "body", "400",
      lambda: raw(b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; filename="a.png"\r\n\r\n'
                  + png_bytes() + b"\r\n--" + BOUNDARY + b"--\r\n")),
    C("part-header-256KiB", "body", "4xx",
      lambda: raw(b"--" + BOUNDARY + b"\r\n" + IMAGE_DISPOSITION + b"\r\nX-Pad: " + b"p" * (256 * 1024)
                  + b"\r\n\r\n" + png_bytes() + b"\r\n--" + BOUNDARY + b"--\r\n")),
    C("non-utf8-field-name", "body", "video",
      lambda: raw(with_png(part(b"\xff\xfe\xc3\x28", b"1"), part(b"seed", b"5"))), S64),
    C("non-utf8-image-filename", "body", "video",
      lambda: raw(multipart(image_part(png_bytes(), filename=b"\xff\xfe\x80.png"))), S64),
    C("non-utf8-seed-value", "body", "400", lambda: raw(with_png(part(b"seed", b"\xff\xfe")))),
    C("unknown-charset-parameter", "body", "either",
      lambda: raw(with_png(part(b"seed", b"5")), **mp_headers(extra="; charset=x-no-such-codec")), S64),
    C("five-file-parts", "body", "4xx", lambda: raw(multipart(*(image_part(png_bytes()) for _ in range(5))))),
    C("image-twice-second-garbage", "body", "either",
      lambda: raw(multipart(image_part(png_bytes()), image_part(b"garbage"))), S64),
    C("image-as-text-field", "body", "400", lambda: raw(multipart(part(b"image", png_bytes())))),
]


# -- running it -----------------------------------------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, ... in bytes, from /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Vm") and line.rstrip().endswith("kB"):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak_rss(pid: int) -> bool:
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class HealthProbe(threading.Thread):
    """GET /healthz every ~50 ms; records anything but a 200, the slowest answer, and the
    highest VmRSS seen."""

    def __init__(self, url: str, pid: int):
        super().__init__(daemon=True)
        self.url, self.pid = url, pid
        self.stop_event = threading.Event()
        self.polls = 0
        self.failures: list[str] = []
        self.slowest = 0.0
        self.rss_peak = 0

    def run(self):
        with httpx.Client(timeout=5) as client:
            while not self.stop_event.is_set():
                t = time.perf_counter()
                try:
                    r = client.get(self.url + "/healthz")
                    if r.status_code != 200:
                        self.failures.append(f"{time.strftime('%X')} {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{time.strftime('%X')} {type(exc).__name__}: {exc}")
                self.slowest = max(self.slowest, time.perf_counter() - t)
                self.polls += 1
                try:
                    self.rss_peak = max(self.rss_peak, proc_status(self.pid)["VmRSS"])
                except (OSError, KeyError):
                    pass
                self.stop_event.wait(0.05)


@dataclass
class Outcome:
    case: Case
    key: str = KEYS[0]
    status: int = 0
    elapsed: float = 0.0
    body: str = ""
    job_id: str | None = None
    video: object = None
    log: str = ""
    problems: list[str] = field(default_factory=list)


def check_error_shape(r: httpx.Response) -> list[str]:
    try:
        body = r.json()
    except ValueError:
        return [f"error body is not JSON: {r.text[:200]!r}"]
    problems = []
    if not isinstance(body, dict) or set(body) != {"id", "name", "errors", "message"}:
        return [f"error body is not the Stability shape: {str(body)[:200]}"]
    if not (isinstance(body["id"], str) and re.fullmatch(r"[0-9a-f]{32}", body["id"])):
        problems.append(f"error id {body['id']!r}")
    if not (isinstance(body["errors"], list) and body["errors"]
            and all(isinstance(e, str) for e in body["errors"])):
        problems.append(f"errors {body['errors']!r}")
    if not (isinstance(body["message"], str) and body["message"]):
        problems.append(f"message {body['message']!r}")
    if not r.headers.get("content-type", "").startswith("application/json"):
        problems.append(f"content-type {r.headers.get('content-type')}")
    return problems


def server_log_since(server: ServerProcess, offset: int) -> str:
    text = server.log_path.read_bytes()[offset:].decode(errors="replace")
    return "".join(line + "\n" for line in text.splitlines() if "/healthz" not in line)


def send(client: httpx.Client, server: ServerProcess, case: Case, key: str = KEYS[0]) -> Outcome:
    out = Outcome(case, key)
    kwargs = case.build()
    if callable(kwargs.get("content")):
        kwargs["content"] = kwargs["content"]()
    kwargs["headers"] = {**kwargs.get("headers", {}), "authorization": f"Bearer {key}"}
    log_from = server.log_path.stat().st_size
    t = time.perf_counter()
    try:
        r = client.post(URL, **kwargs)
    except httpx.HTTPError as exc:
        out.elapsed = time.perf_counter() - t
        out.problems.append(f"no response: {type(exc).__name__}: {exc}")
        out.log = server_log_since(server, log_from)
        return out
    out.elapsed = time.perf_counter() - t
    time.sleep(0.01)                                   # let the request's log lines land
    out.log = server_log_since(server, log_from)
    out.status, out.body = r.status_code, r.text[:4000]
    if r.status_code == 200:
        job = r.json()
        if isinstance(job, dict) and re.fullmatch(r"[0-9a-f]{64}", str(job.get("id"))):
            out.job_id = job["id"]
        else:
            out.problems.append(f"200 without a job id: {r.text[:200]}")
    elif 400 <= r.status_code < 500:
        out.problems += check_error_shape(r)
    expect = case.expect
    if r.status_code == 429:
        out.problems.append(f"429: the corpus outran the server's limits, so no verdict on the "
                            f"input (send slower or with more keys): {r.text[:200]}")
    elif r.status_code >= 500 or r.status_code < 200 or 200 < r.status_code < 400:
        out.problems.append(f"status {r.status_code}: {r.text[:300]}")
    elif expect in ("400", "413") and r.status_code != int(expect):
        out.problems.append(f"expected {expect}, got {r.status_code}: {r.text[:300]}")
    elif expect == "4xx" and r.status_code == 200:
        out.problems.append("expected a 4xx, got 200 (accepted)")
    elif expect == "video" and r.status_code != 200:
        out.problems.append(f"expected 200 and a video, got {r.status_code}: {r.text[:300]}")
    if case.limit_s is not None and out.elapsed >= case.limit_s:
        out.problems.append(f"took {out.elapsed:.2f} s (limit {case.limit_s:g} s)")
    return out


def fetch_video(client: httpx.Client, out: Outcome, deadline: float) -> None:
    while True:
        res = client.get(f"{URL}/result/{out.job_id}",
                         headers={"accept": "video/*", "authorization": f"Bearer {out.key}"})
        if res.status_code != 202:
            break
        if time.time() > deadline:
            out.problems.append("video not ready before the deadline")
            return
        time.sleep(0.05)
    if res.status_code != 200:
        out.problems.append(f"result: {res.status_code}: {res.text[:300]}")
        return
    try:
        info = inspect_mp4(res.content)
    except Exception as exc:          # any failure to parse the MP4 is the finding
        out.problems.append(f"result is not a readable MP4: {type(exc).__name__}: {exc}")
        return
    out.video = info
    if info.codec != "h264" or info.frames != FRAMES or (info.width, info.height) not in out.case.sizes:
        out.problems.append(f"video {info.codec} {info.width}x{info.height} {info.frames} frames; "
                            f"expected h264, {FRAMES} frames, one of "
                            f"{sorted(f'{w}x{h}' for w, h in out.case.sizes)}")


@dataclass
class CorpusRun:
    server: ServerProcess
    outcomes: dict[str, Outcome]
    health: HealthProbe
    rss_before: int
    rss_after: int
    rss_peak: int
    hwm_reset: bool
    hwm_end: int
    total_s: float


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    data = tmp_path_factory.mktemp("hostile") / "data"
    server = ServerProcess(data, ENV).start()
    pid = server.proc.pid
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            warm = send(client, server, C("warm-up", "format", "video", lambda: img(png_bytes(96, 64)),
                                          sizes={(96, 64)}))
            assert warm.job_id, warm.problems
            fetch_video(client, warm, time.time() + 60)
            assert not warm.problems, warm.problems

            rss_before = proc_status(pid)["VmRSS"]
            hwm_reset = reset_peak_rss(pid)
            health = HealthProbe(server.url, pid)
            health.start()
            t0 = time.perf_counter()
            outcomes, pending = {}, []
            deadline = time.time() + 120
            for i, case in enumerate(CASES):
                out = outcomes[case.name] = send(client, server, case, KEYS[i % len(KEYS)])
                if out.job_id:
                    pending.append(out)
                while len(pending) >= MAX_PENDING:
                    fetch_video(client, pending.pop(0), deadline)
            for out in pending:
                fetch_video(client, out, deadline)
            total_s = time.perf_counter() - t0
            health.stop_event.set()
            health.join(10)
            status = proc_status(pid)
        full_log = server.log()
        for out in outcomes.values():
            if out.job_id and out.problems:
                out.log += "".join(line + "\n" for line in full_log.splitlines()
                                   if out.job_id in line and line not in out.log)
        run = CorpusRun(server, outcomes, health, rss_before, status["VmRSS"],
                        max(health.rss_peak, status["VmHWM"] if hwm_reset else 0, status["VmRSS"]),
                        hwm_reset, status["VmHWM"], total_s)
        print_summary(run)
        yield run
    finally:
        server.stop()


def print_summary(run: CorpusRun) -> None:
    outs = list(run.outcomes.values())
    bombs = [o for o in outs if o.case.group == "bomb"]
    slowest = max(bombs, key=lambda o: o.elapsed)
    count = lambda lo, hi: sum(lo <= o.status < hi for o in outs)       # noqa: E731
    print(f"\nhostile corpus: {len(outs)} cases in {run.total_s:.1f} s; "
          f"4xx {count(400, 500)}, 2xx {count(200, 300)}, 5xx {count(500, 600)}, "
          f"no response {sum(o.status == 0 for o in outs)}")
    print(f"  RSS before {run.rss_before / MIB:.0f} MiB, peak {run.rss_peak / MIB:.0f} MiB, "
          f"after {run.rss_after / MIB:.0f} MiB (VmHWM {run.hwm_end / MIB:.0f} MiB, "
          f"{'reset after warm-up' if run.hwm_reset else 'since start: reset refused'})")
    print(f"  slowest bomb: {slowest.case.name} {slowest.elapsed * 1000:.0f} ms; "
          f"/healthz {run.health.polls} polls, {len(run.health.failures)} failures, "
          f"slowest {run.health.slowest * 1000:.0f} ms")
    for o in outs:
        video = f" video {o.video.width}x{o.video.height}x{o.video.frames}" if o.video else ""
        mark = "FAIL" if o.problems else "ok  "
        print(f"  {mark} {o.case.group:8} {o.case.name:42} {o.status} {o.elapsed * 1000:6.0f} ms{video}"
              + (f"  <- {'; '.join(o.problems)[:200]}" if o.problems else ""))


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_case(corpus, name):
    out = corpus.outcomes[name]
    assert not out.problems, (f"{name} ({out.case.group}, expected {out.case.expect}): "
                              + "; ".join(out.problems)
                              + f"\nresponse {out.status} in {out.elapsed * 1000:.0f} ms: {out.body}"
                              + f"\nserver log while it was handled:\n{out.log[-3000:]}")


def test_every_request_answered_never_a_5xx(corpus):
    bad = [f"{o.case.name}: {o.status or 'no response'} {'; '.join(o.problems)}"
           for o in corpus.outcomes.values() if o.status >= 500 or o.status == 0]
    assert not bad, "\n".join(bad)


def test_healthz_always_answered_200(corpus):
    assert corpus.health.polls > 20, corpus.health.polls
    assert not corpus.health.failures, corpus.health.failures[:20]


def test_error_messages_name_no_internals(corpus):
    """A 4xx explains the problem to the client; it carries no Python object reprs, heap
    addresses, tracebacks or source paths."""
    leaky = re.compile(r"object at 0x[0-9a-f]+|Traceback|File \"/|\.py\b|<_io\.")
    leaks = [f"{o.case.name}: {o.body}" for o in corpus.outcomes.values()
             if 400 <= o.status < 500 and leaky.search(o.body)]
    assert not leaks, "\n".join(leaks)


def test_bombs_are_refused_fast(corpus):
    bombs = [o for o in corpus.outcomes.values() if o.case.group == "bomb"]
    assert all(o.case.limit_s == BOMB_MAX_S for o in bombs)
    slow = {o.case.name: round(o.elapsed, 3) for o in bombs if o.elapsed >= BOMB_MAX_S}
    assert not slow, slow


def test_memory_does_not_grow(corpus):
    assert corpus.rss_peak - corpus.rss_before < RSS_GROWTH_MAX, (
        f"peak {corpus.rss_peak / MIB:.0f} MiB against {corpus.rss_before / MIB:.0f} MiB after warm-up")
    assert corpus.rss_after - corpus.rss_before < RSS_GROWTH_MAX, (
        f"after {corpus.rss_after / MIB:.0f} MiB against {corpus.rss_before / MIB:.0f} MiB after warm-up")
    assert corpus.server.proc.poll() is None, "the server died"
