"""The SVD sampling loop, ours rather than the pipeline's `__call__`, for three reasons:
- a batch of videos can share each UNet call while every video keeps its own seed,
  guidance and motion bucket (diffusers' call takes one value of each for the whole batch);
- the UNet call can go through a step cache (inference/step_cache.py), and the two halves of
  classifier-free guidance can run one after the other to halve activation memory;
- a warm-up can run the denoising steps without decoding.

For a single video with the default options it computes exactly what
StableVideoDiffusionPipeline.__call__ computes (tests/unit/test_sampler.py compares them):
the same components, the same order of random draws, the same arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    _append_dims, retrieve_timesteps)
from diffusers.utils.torch_utils import randn_tensor

from inference.base import (CONDITIONING_FPS, MIN_GUIDANCE_SCALE, GenerationRequest, StepCallback,
                            uses_guidance)
from inference.consistency import ConsistencyScheduler

# unet(sample, t, encoder_hidden_states, added_time_ids, step, total_steps, branch=0)
#   -> noise prediction. `branch` tells the calls of one step apart when the guidance halves
#   run one after the other (0 unconditional, 1 conditional): a step cache keeps one state each.
UNetCall = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class SampleOptions:
    frames: int
    steps: int
    decode_chunk_size: int = 8
    cfg_sequential: bool = False   # guidance halves one after the other: less memory, ~same time
    decode: bool = True            # False: stop after denoising (warm-up)
    guidance_slope: float = 1.0    # max guidance = 1 + (cfg_scale - 1) * slope (a few-step model's)


def _halves(tensor: torch.Tensor, cfg: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The pipeline's helpers return [unconditional; conditional] when guiding."""
    if not cfg:
        return None, tensor
    uncond, cond = tensor.chunk(2)
    return uncond, cond


def _with_guidance(parts: list[tuple[torch.Tensor | None, torch.Tensor]], cfg: bool) -> torch.Tensor:
    conds = torch.cat([c for _, c in parts])
    if not cfg:
        return conds
    return torch.cat([torch.cat([u for u, _ in parts]), conds])


def _randn(shape, generator: torch.Generator, device, dtype) -> torch.Tensor:
    """Noise drawn as the pipeline draws it (on the generator's device, then moved)."""
    return randn_tensor(shape, generator=generator, device=torch.device(device), dtype=dtype)


def _conditioning(pipe, request: GenerationRequest, generator: torch.Generator, cfg: bool,
                  frames: int, device):
    """One video's CLIP embedding, VAE image latents and added time ids, drawn from its own
    generator in the pipeline's order (augmentation noise first, then the latents)."""
    width, height = request.image.size
    embeddings = pipe._encode_image(request.image, device, 1, cfg)
    image = pipe.video_processor.preprocess(request.image, height=height, width=width).to(device)
    noise = _randn(image.shape, generator, device, image.dtype)
    image = image + request.noise_aug_strength * noise
    upcast = pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast
    if upcast:
        pipe.vae.to(dtype=torch.float32)
    latents = pipe._encode_vae_image(image, device=device, num_videos_per_prompt=1,
                                     do_classifier_free_guidance=cfg)
    latents = latents.to(embeddings.dtype)
    if upcast:
        pipe.vae.to(dtype=torch.float16)
    latents = latents.unsqueeze(1).repeat(1, frames, 1, 1, 1)
    time_ids = pipe._get_add_time_ids(CONDITIONING_FPS - 1, request.motion_bucket_id,
                                      request.noise_aug_strength, embeddings.dtype, 1, 1, cfg)
    return _halves(embeddings, cfg), _halves(latents, cfg), _halves(time_ids.to(device), cfg)


@torch.inference_mode()
def sample(pipe, requests: Sequence[GenerationRequest], options: SampleOptions,
           on_step: StepCallback | None = None, unet: UNetCall | None = None,
           scheduler=None) -> list[np.ndarray]:
    """Generate one video per request, all in one batch. The requests must share size and
    guidance on/off (see inference.base.BatchKey). `scheduler`: the pipeline's own (Euler)
    unless given, e.g. inference.consistency's. Returns uint8 (frames, h, w, 3) arrays, or
    nothing when `options.decode` is False."""
    cfg = uses_guidance(requests[0].cfg_scale)
    if any(uses_guidance(r.cfg_scale) != cfg or r.image.size != requests[0].image.size for r in requests):
        raise ValueError("a batch must share image size and guidance on/off")
    width, height = requests[0].image.size
    frames, device = options.frames, pipe._execution_device
    # The generators live on the CPU so that a seed gives the same noise on any device.
    generators = [torch.Generator("cpu").manual_seed(r.seed) for r in requests]
    parts = [_conditioning(pipe, r, g, cfg, frames, device) for r, g in zip(requests, generators)]
    embeddings = _with_guidance([p[0] for p in parts], cfg)
    image_latents = _with_guidance([p[1] for p in parts], cfg)
    time_ids = _with_guidance([p[2] for p in parts], cfg)

    scheduler = scheduler or pipe.scheduler
    stochastic = isinstance(scheduler, ConsistencyScheduler)     # it draws noise every step
    timesteps, steps = retrieve_timesteps(scheduler, options.steps, device, None, None)
    # As the pipeline's prepare_latents, with this scheduler's initial noise scale.
    shape = (len(requests), frames, pipe.unet.config.in_channels // 2,
             height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    latents = randn_tensor(shape, generator=generators if len(generators) > 1 else generators[0],
                           device=torch.device(device), dtype=embeddings.dtype)
    latents = latents * scheduler.init_noise_sigma
    # Guidance rises over the frames from min(1, cfg) to cfg, per video.
    guidance = torch.stack([torch.linspace(min(MIN_GUIDANCE_SCALE, r.cfg_scale),
                                           _max_guidance(r.cfg_scale, options.guidance_slope),
                                           frames)
                            for r in requests]).to(device, latents.dtype)
    guidance = _append_dims(guidance, latents.ndim)
    unet = unet or _plain_unet(pipe.unet)

    for i, t in enumerate(timesteps):
        model_input = torch.cat([latents] * 2) if cfg else latents
        model_input = scheduler.scale_model_input(model_input, t)
        model_input = torch.cat([model_input, image_latents], dim=2)
        if cfg and options.cfg_sequential:
            n = len(requests)
            noise_pred = torch.cat([
                unet(model_input[:n], t, embeddings[:n], time_ids[:n], i, steps, branch=0),
                unet(model_input[n:], t, embeddings[n:], time_ids[n:], i, steps, branch=1)])
        else:
            noise_pred = unet(model_input, t, embeddings, time_ids, i, steps)
        if cfg:
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + guidance * (cond - uncond)
        if stochastic:                 # each video's noise from its own generator
            latents = scheduler.step(noise_pred, t, latents, generator=generators).prev_sample
        else:
            latents = scheduler.step(noise_pred, t, latents).prev_sample
        if on_step is not None:
            on_step(i + 1, steps)

    if not options.decode:
        pipe.maybe_free_model_hooks()
        return []
    videos = []
    for one in latents.split(1):
        # Each video on its own: the temporal decoder must not mix frames of two videos.
        decoded = pipe.decode_latents(one, frames, min(options.decode_chunk_size, frames))
        video = pipe.video_processor.postprocess_video(video=decoded, output_type="np")[0]
        videos.append((np.clip(video, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    pipe.maybe_free_model_hooks()
    return videos


def _max_guidance(cfg_scale: float, slope: float) -> float:
    """The last frame's guidance: cfg_scale itself, or scaled down from 1 for a model
    distilled for a narrower range (guidance stays on exactly when cfg_scale > 1)."""
    if slope == 1.0 or cfg_scale <= MIN_GUIDANCE_SCALE:
        return cfg_scale
    return MIN_GUIDANCE_SCALE + (cfg_scale - MIN_GUIDANCE_SCALE) * slope


def _plain_unet(model) -> UNetCall:
    def call(sample, t, encoder_hidden_states, added_time_ids, step, total_steps, branch=0):
        return model(sample, t, encoder_hidden_states=encoder_hidden_states,
                     added_time_ids=added_time_ids, return_dict=False)[0]
    return call
