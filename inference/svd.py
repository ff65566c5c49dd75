"""The diffusers StableVideoDiffusionPipeline behind the VideoGenerator protocol.

One class serves SVD-XT on a GPU and the tiny random-weight pipeline on a CPU: same call,
same conditioning, same seeding. Conditioning follows the reference sampler:
- motion_bucket_id from the request;
- fps conditioning 6 (diffusers subtracts one from its `fps=7` argument; we pass 6);
- noise_aug_strength 0.02;
- guidance rises linearly over the frames from 1.0 (first frame) to cfg_scale (last frame);
  with cfg_scale <= 1 there is no classifier-free guidance at all (one UNet pass per step).
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image


@contextlib.contextmanager
def _quiet(*names: str):
    """Only errors from these loggers for a while."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [one.level for one in loggers]
    for one in loggers:
        one.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for one, level in zip(loggers, levels):
            one.setLevel(level)


# Import-time notices that are noise here: without torchvision, transformers falls back to the
# PIL image processor (the one SVD was made with) and says so; where torchao is installed,
# diffusers imports it, which reports each kernel library built for another device or Python.
with _quiet("torchao", "torch.utils._pytree"):
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as hf_logging
    # Both libraries set their root logger's level when it is first used: use it first.
    hf_logging.get_verbosity(), diffusers_logging.get_verbosity()
    with _quiet("transformers", "diffusers"):
        from diffusers import StableVideoDiffusionPipeline


class _DropFp32CastNotice(logging.Filter):
    """The SVD pipeline casts its VAE to float32 and back on every call (force_upcast), and
    diffusers warns about each cast; three identical lines per video say nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("There are modules in")


logging.getLogger("diffusers.models.modeling_utils").addFilter(_DropFp32CastNotice())

from inference.base import BatchKey, GenerationRequest, StepCallback, VideoGenerator, batch_key
from inference.sampler import SampleOptions, sample
from inference.speed import SpeedOptions, apply_fp8, compile_unet, set_feed_forward_chunking

log = logging.getLogger(__name__)

SVD_XT_FRAMES = 25
SVD_XT_STEPS = 25
# Decoding all 25 frames at once doubles peak memory (32.5 GiB vs 15.1 GiB on SVD-XT) for no
# speed gain; 8 frames at a time keeps it flat.
DEFAULT_DECODE_CHUNK = 8
# Warm-up: enough steps that a step-cached step runs too; nothing is decoded.
WARMUP_STEPS = 3


# Memory profiles (SVD_MEMORY_PROFILE): what each trades for memory, from fastest to leanest.
#   full:     decode 8 frames at a time (~15 GiB peak for SVD-XT 1024x576x25 in fp16)
#   balanced: decode 4 at a time, UNet feed-forward in slices
#   low:      decode 2 at a time, feed-forward in slices, the two halves of guidance one
#             after the other, only the running model on the GPU (model CPU offload); for
#             cards of about 8 GiB
PROFILES = ("full", "balanced", "low")
DECODE_CHUNKS = {"full": DEFAULT_DECODE_CHUNK, "balanced": 4, "low": 2}
# GPU memory (GiB) from which `auto` picks a profile: each profile's measured peak (the
# weights included), plus headroom. Compared with what the card has free for the model, that
# is its free memory with this pipeline's own weights counted as free.
AUTO_THRESHOLDS = (("full", 18.0), ("balanced", 12.0))


def auto_profile(free_bytes: int, weight_bytes: int = 0) -> str:
    """The fastest profile that fits: `free_bytes` free on the card while `weight_bytes` of the
    pipeline's own weights are on it (they are part of each profile's peak)."""
    available = (free_bytes + weight_bytes) / 2**30
    for profile, needed in AUTO_THRESHOLDS:
        if available >= needed:
            return profile
    return "low"


def resident_bytes(pipe, device_type: str = "cuda") -> int:
    """Bytes of the pipeline's weights and buffers that are on a `device_type` device."""
    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in [*component.parameters(), *component.buffers()]:
                if tensor.device.type == device_type:
                    total += tensor.numel() * tensor.element_size()
    return total


class SvdGenerator(VideoGenerator):
    can_batch = True

    def __init__(self, pipe: StableVideoDiffusionPipeline, device: str, description: str,
                 default_frames: int, default_steps: int,
                 decode_chunk_size: int = DEFAULT_DECODE_CHUNK, profile: str = "full",
                 speed: SpeedOptions | None = None, scheduler=None, guidance_slope: float = 1.0,
                 max_decode_chunk: int | None = None):
        """`scheduler`: the sampler (None: the pipeline's own Euler scheduler);
        `guidance_slope`: max guidance = 1 + (cfg_scale - 1) * slope; `max_decode_chunk`:
        frames decoded at a time at most, whatever the profile (a preset's choice)."""
        self.pipe = pipe
        self.scheduler = scheduler
        self.guidance_slope = guidance_slope
        self.max_decode_chunk = max_decode_chunk
        self.device = device
        self.description = description
        self.default_frames = default_frames
        self.default_steps = default_steps
        self.decode_chunk_size = decode_chunk_size
        self.profile = "full"
        self.speed = speed or SpeedOptions()
        self.step_cache = None
        self._apply_speed()
        self.set_profile(profile)

    def _apply_speed(self) -> None:
        unet, speed = self.pipe.unet, self.speed
        if speed.fp8:
            log.info("FP8 matmuls in %d linear layers of the UNet", apply_fp8(unet))
        if speed.compiled:
            compile_unet(unet, speed.compile, speed.cache_dir, speed.compile_backend)
        if speed.step_cache > 1:
            from inference.step_cache import StepCache
            self.step_cache = StepCache(unet, speed.step_cache)

    def set_profile(self, profile: str) -> None:
        """Switch memory profile (see PROFILES); `auto` picks from the GPU memory the model
        may use. Only leaving `low` loads more onto the card (the whole pipeline, which model
        offload kept on the CPU); if that runs out of memory, the generator stays usable in
        `low` and the error is raised."""
        cuda = self.device.startswith("cuda")
        if profile == "auto":
            profile = (auto_profile(torch.cuda.mem_get_info(self.device)[0],
                                    resident_bytes(self.pipe)) if cuda else "full")
        if profile not in PROFILES:
            raise ValueError(f"unknown memory profile {profile!r}; use auto or one of {PROFILES}")
        if cuda and profile == "low" and self.profile != "low":
            # Moves every model to the CPU first; each goes to the GPU while it runs.
            self.pipe.enable_model_cpu_offload(device=self.device)
        elif cuda and self.profile == "low" and profile != "low":
            try:
                self.pipe.remove_all_hooks()
                self.pipe.to(self.device)
            except torch.OutOfMemoryError:
                # Half moved and without hooks: offload again, which moves it all back.
                self.pipe.enable_model_cpu_offload(device=self.device)
                self._free_memory()
                raise
        self.decode_chunk_size = min(DECODE_CHUNKS[profile], self.max_decode_chunk or 10**6)
        set_feed_forward_chunking(self.pipe.unet, profile != "full")
        self.profile = profile

    def batch_key(self, request: GenerationRequest) -> BatchKey:
        return batch_key(*request.image.size, request.num_frames or self.default_frames,
                         request.steps or self.default_steps, request.cfg_scale)

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None,
                 low_memory: int = 0) -> np.ndarray:
        return self.generate_batch([request], on_step, low_memory)[0]

    def generate_batch(self, requests: list[GenerationRequest],
                       on_step: StepCallback | None = None, low_memory: int = 0) -> list[np.ndarray]:
        """One video per request, in one batch; the requests must share batch_key."""
        if len({self.batch_key(r) for r in requests}) != 1:
            raise ValueError("requests of one batch must share size, frames, steps and guidance")
        # After an out-of-memory error: a leaner profile for this one call, then back. The
        # ladder only descends: level 1 is at least `balanced`, level 2 `low`, and a profile
        # already leaner than that stays.
        before = self.profile
        target = PROFILES[max(PROFILES.index(before), min(low_memory, len(PROFILES) - 1))]
        try:
            if target != before:
                self._free_memory()
                self.set_profile(target)
            return self._sample(requests, on_step)
        finally:
            if self.profile != before:
                self._free_memory()
                try:
                    self.set_profile(before)
                except torch.OutOfMemoryError:
                    log.warning("could not return to the %s memory profile (out of memory); "
                                "staying in %s", before, self.profile)

    def warm_up(self, sizes: list[tuple[int, int]], frames: int | None = None,
                max_batch: int = 1) -> None:
        """Run the denoising steps once per shape the UNet will see, without decoding, so
        that compiling, kernel selection and allocator growth happen before the first
        request, not during it. Per size: one video with guidance and one without (the
        latter is also the shape of the `low` profile's guidance halves), and batches of
        2..max_batch with guidance."""
        shapes = [(1, 1.8), (1, 1.0)] + [(n, 1.8) for n in range(2, max_batch + 1)]
        for width, height in sizes:
            image = Image.new("RGB", (width, height), (128, 128, 128))
            for n, cfg_scale in shapes:
                requests = [GenerationRequest(image=image, seed=1 + i, cfg_scale=cfg_scale,
                                              num_frames=frames, steps=WARMUP_STEPS)
                            for i in range(n)]
                self._sample(requests, None, decode=False)

    def _sample(self, requests: list[GenerationRequest], on_step: StepCallback | None,
                decode: bool = True) -> list[np.ndarray]:
        first = requests[0]
        options = SampleOptions(frames=first.num_frames or self.default_frames,
                                steps=first.steps or self.default_steps,
                                decode_chunk_size=self.decode_chunk_size,
                                cfg_sequential=self.profile == "low", decode=decode,
                                guidance_slope=self.guidance_slope)
        if self.step_cache is not None:
            self.step_cache.reset()
        return sample(self.pipe, requests, options, on_step, unet=self.step_cache,
                      scheduler=self.scheduler)

    def _free_memory(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def memory_stats(self) -> dict[str, int]:
        """GPU memory of this generator's device, for metrics (empty on a CPU)."""
        if not self.device.startswith("cuda"):
            return {}
        return {"allocated": torch.cuda.memory_allocated(), "reserved": torch.cuda.memory_reserved(),
                "peak_allocated": torch.cuda.max_memory_allocated()}


def load_pretrained(source: str | Path, device: str) -> tuple[StableVideoDiffusionPipeline, str]:
    """SVD from a local directory or the Hugging Face cache, never downloaded at run time;
    with what it is, for the generator's description."""
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    kwargs = dict(torch_dtype=dtype, local_files_only=True)
    warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
    try:
        pipe = StableVideoDiffusionPipeline.from_pretrained(str(source), variant="fp16", **kwargs)
    except (OSError, ValueError):
        # A local copy saved without the fp16 variant files.
        pipe = StableVideoDiffusionPipeline.from_pretrained(str(source), **kwargs)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    name = str(source) if os.path.isdir(str(source)) else f"hf:{source}"
    return pipe, f"{name} ({str(dtype).removeprefix('torch.')}, {device})"


def model_frames(pipe) -> int:
    """The frame count the pipeline's UNet was trained for (14 for SVD, 25 for SVD-XT)."""
    return int(getattr(pipe.unet.config, "num_frames", SVD_XT_FRAMES) or SVD_XT_FRAMES)
