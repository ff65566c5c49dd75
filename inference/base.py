"""What every video generator takes and gives, independent of the model behind it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
from PIL import Image

# Called after each denoising step with (steps done, total steps). It may raise to stop the
# generation (cancellation, timeout); the generator lets the exception through.
StepCallback = Callable[[int, int], None]

# Stable Video Diffusion's reference sampler conditions on fps - 1 = 6; diffusers' `fps=7`
# argument gives exactly that, so this is the value handed to the pipeline.
CONDITIONING_FPS = 7
NOISE_AUG_STRENGTH = 0.02
MIN_GUIDANCE_SCALE = 1.0
# Output containers and their media types; mp4 (H.264) is the Stability API's.
FORMATS = {"mp4": "video/mp4", "webm": "video/webm", "gif": "image/gif"}


@dataclass(frozen=True)
class GenerationRequest:
    image: Image.Image          # RGB, already validated, at the output size
    seed: int                   # 1..4294967294, already resolved (never 0)
    cfg_scale: float = 1.8      # the last frame's guidance; the first frame gets 1.0
    motion_bucket_id: int = 127
    num_frames: int | None = None   # None: the generator's default
    steps: int | None = None        # None: the generator's default
    noise_aug_strength: float = NOISE_AUG_STRENGTH


class GenerationAborted(Exception):
    """Raised from a step callback to stop a generation on purpose (cancel, timeout)."""


# Lower-memory settings a generator can fall back to after running out of GPU memory:
# 1 = decode two frames at a time and chunk the UNet's feed-forward; 2 = also keep only the
# running model on the GPU (CPU offload). Each is slower than the one before.
LOW_MEMORY_LEVELS = 2


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (and the CUDA/cuDNN variants), without importing torch."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text.lower()
                                              and ("CUDA" in text or "CUBLAS" in text))


class VideoGenerator(Protocol):
    """Turns one request into frames: uint8 array of shape (frames, height, width, 3)."""

    description: str        # what is loaded, for logs, /readyz and the x-svd-model header
    default_frames: int
    default_steps: int

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None,
                 low_memory: int = 0) -> np.ndarray:
        """`low_memory`: 0 for full speed, up to LOW_MEMORY_LEVELS after an out-of-memory."""
        ...
