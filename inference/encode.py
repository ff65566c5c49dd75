"""Frames -> MP4 that browsers play while it loads: H.264, yuv420p, moov before mdat."""
from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np

DEFAULT_CRF = 18
DEFAULT_PRESET = "veryfast"   # measured: 2.5x faster than "medium" for ~8 % more bytes


def even_crop(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides: drop a last odd row/column (never happens at SVD's sizes)."""
    _, h, w, _ = frames.shape
    return frames[:, : h - h % 2, : w - w % 2]


def encode_mp4(frames: np.ndarray, path: str | os.PathLike, fps: int,
               crf: int = DEFAULT_CRF, preset: str = DEFAULT_PRESET, threads: int = 0) -> None:
    """Write `frames` (uint8, shape (n, h, w, 3)) to `path` as an H.264 MP4.

    Writes to a real file because fast start rewrites the file after the last frame.
    `threads` 0 lets x264 choose.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (n, h, w, 3), got {frames.dtype} {frames.shape}")
    frames = even_crop(frames)
    n, h, w, _ = frames.shape
    if n == 0 or h == 0 or w == 0:
        raise ValueError("no frames to encode")
    with av.open(str(path), mode="w", format="mp4",
                 options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        stream.codec_context.thread_count = threads
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
