"""Image sniffing and decoding; MP4 encoding."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from inference.encode import encode_mp4
from inference.images import ImageError, decode_rgb, probe
from tests.helpers import decode_frames, inspect_mp4, jpeg_bytes, png_bytes


@pytest.mark.parametrize("data,fmt", [(png_bytes(96, 64), "png"), (jpeg_bytes(96, 64), "jpeg"),
                                      (jpeg_bytes(96, 64, progressive=True), "jpeg")])
def test_probe_reads_format_and_size_from_the_header(data, fmt):
    info = probe(data)
    assert (info.format, info.width, info.height) == (fmt, 96, 64)
    assert decode_rgb(data, info).size == (96, 64)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "I;16", "1"])
def test_all_png_modes_become_rgb(mode):
    buf = io.BytesIO()
    Image.new(mode, (64, 64)).save(buf, format="PNG")
    img = decode_rgb(buf.getvalue(), probe(buf.getvalue()))
    assert img.mode == "RGB" and img.size == (64, 64)


def test_transparent_pixels_become_white():
    data = png_bytes(mode="RGBA", color=(0, 0, 0, 0))
    assert decode_rgb(data, probe(data)).getpixel((3, 3)) == (255, 255, 255)


def test_cmyk_jpeg_decodes_to_rgb():
    buf = io.BytesIO()
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(buf, format="JPEG")
    assert decode_rgb(buf.getvalue(), probe(buf.getvalue())).mode == "RGB"


@pytest.mark.parametrize("data", [b"", b"GIF89a....", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff",
                                  b"\xff\xd8\xff\xe0\x00\x01"])
def test_probe_refuses_non_images_and_stubs(data):
    with pytest.raises(ImageError):
        probe(data)


def test_truncated_images_fail_to_decode():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "PNG")
    noisy_png = buf.getvalue()
    for data in (noisy_png[: len(noisy_png) // 2], jpeg_bytes()[:300]):
        with pytest.raises(ImageError):
            decode_rgb(data, probe(data))


def test_encode_mp4_is_browser_playable(tmp_path):
    frames = np.random.default_rng(1).integers(0, 255, (7, 64, 96, 3), dtype=np.uint8)
    out = tmp_path / "v.mp4"
    encode_mp4(frames, out, fps=7)
    info = inspect_mp4(out.read_bytes())
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    assert (info.frames, info.width, info.height, round(info.fps)) == (7, 96, 64, 7)
    assert info.fast_start, info.top_level_boxes


def test_encode_crops_odd_sides_and_rejects_bad_arrays(tmp_path):
    encode_mp4(np.zeros((2, 65, 63, 3), np.uint8), tmp_path / "odd.mp4", fps=7)
    info = inspect_mp4((tmp_path / "odd.mp4").read_bytes())
    assert (info.width, info.height) == (62, 64)
    with pytest.raises(ValueError):
        encode_mp4(np.zeros((2, 64, 64), np.uint8), tmp_path / "bad.mp4", fps=7)


def test_same_frames_give_the_same_bytes_every_time(tmp_path):
    frames = np.random.default_rng(2).integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    digests = set()
    for i in range(8):
        encode_mp4(frames, tmp_path / f"{i}.mp4", fps=7)
        digests.add((tmp_path / f"{i}.mp4").read_bytes())
    assert len(digests) == 1


def test_colours_survive_the_round_trip(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 120, 200), (255, 255, 255), (0, 0, 0)]
    frames = np.stack([np.full((64, 64, 3), c, np.uint8) for c in colours])
    encode_mp4(frames, tmp_path / "c.mp4", fps=7)
    decoded = decode_frames((tmp_path / "c.mp4").read_bytes())
    for colour, frame in zip(colours, decoded):
        assert np.abs(frame[32, 32].astype(int) - colour).max() <= 4


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (96, 64), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6                                    # rotate 90 degrees clockwise to view
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    data = buf.getvalue()
    assert (probe(data).width, probe(data).height) == (96, 64)
    assert decode_rgb(data, probe(data)).size == (64, 96)


def test_an_encoder_thread_yields_the_cpu_without_touching_the_rest_of_the_process():
    import os
    import sys
    import threading

    from inference.encode import yield_cpu_to_the_gpu_feed
    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread priorities are Linux's")
    seen = {}

    def encoder():
        yield_cpu_to_the_gpu_feed()
        seen["thread"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    before = os.getpriority(os.PRIO_PROCESS, 0)
    t = threading.Thread(target=encoder)
    t.start()
    t.join()
    assert seen["thread"] == min(before + 10, 19)
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
