"""What every video generator takes and gives, independent of the model behind it: the
request, the VideoGenerator contract the worker, the loader and the CLI rely on, which
requests can share a batch, and the out-of-memory ladder."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, TypeVar

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


def uses_guidance(cfg_scale: float) -> bool:
    """Classifier-free guidance (two UNet passes a step) only above the first frame's 1.0."""
    return cfg_scale > MIN_GUIDANCE_SCALE


class BatchKey(NamedTuple):
    """Requests (or queued jobs) with equal keys can share one generator call."""
    width: int
    height: int
    frames: int | None         # None: the generator's default
    steps: int | None
    guided: bool               # see uses_guidance


def batch_key(width: int, height: int, frames: int | None, steps: int | None,
              cfg_scale: float) -> BatchKey:
    return BatchKey(width, height, frames, steps, uses_guidance(cfg_scale))


T = TypeVar("T")


def with_less_memory(call: Callable[[int], T], on_retry: Callable[[int], None] | None = None) -> T:
    """`call(0)`, at full speed; after an out-of-memory error, `call(level)` again at the next
    lower-memory level (`on_retry(level)` first), up to LOW_MEMORY_LEVELS. Any other error,
    and the last level's, goes through."""
    for level in range(LOW_MEMORY_LEVELS + 1):
        try:
            return call(level)
        except Exception as exc:
            if not is_out_of_memory(exc) or level == LOW_MEMORY_LEVELS:
                raise
            if on_retry is not None:
                on_retry(level + 1)
    raise AssertionError("unreachable")


class VideoGenerator:
    """The contract between the server and a model family: everything the worker, the loader
    and the CLI call. A second family subclasses this in inference/ and nothing under app/
    changes. Frames are uint8 arrays of shape (frames, height, width, 3).

    The hooks with a body here are optional: a generator without batches, memory profiles,
    warm-up or GPU memory figures keeps these."""

    description: str = "video generator"   # what is loaded: logs, /readyz, x-svd-model
    default_frames: int                    # when the request leaves frames unset
    default_steps: int
    can_batch: bool = False   # generate_batch runs its requests together (SVD_MAX_BATCH)

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None,
                 low_memory: int = 0) -> np.ndarray:
        """One video. `low_memory`: 0 for full speed, up to LOW_MEMORY_LEVELS after an
        out-of-memory error. Exceptions raised by `on_step` go through."""
        raise NotImplementedError

    def generate_batch(self, requests: list[GenerationRequest],
                       on_step: StepCallback | None = None,
                       low_memory: int = 0) -> list[np.ndarray]:
        """One video per request, in one call; the requests share a BatchKey. Called only
        when `can_batch`."""
        raise NotImplementedError(f"{type(self).__name__} runs one video at a time")

    def set_profile(self, profile: str) -> None:
        """SVD_MEMORY_PROFILE: auto, full, balanced or low. Without profiles: one, `full`."""
        if profile not in ("auto", "full"):
            raise ValueError(f"{type(self).__name__} has no memory profile {profile!r}")

    def warm_up(self, sizes: list[tuple[int, int]], frames: int | None = None,
                max_batch: int = 1) -> None:
        """Run every shape the first requests will have once (compiling, kernel choice,
        allocator growth), before the server says it is ready. Nothing to do by default."""

    def memory_stats(self) -> dict[str, int]:
        """GPU memory for the metrics (allocated, reserved, peak_allocated); empty on a CPU."""
        return {}
