"""Named models (`SVD_MODEL=<preset>`): a base pipeline, optionally a UNet loaded over it, the
sampler, and the defaults it was made for, so that a user names one word instead of five
settings. A request's own `frames` and `steps` still win.

`animatelcm-svd-xt` is SVD-XT with AnimateLCM's consistency-distilled UNet (arXiv 2402.00769):
4 steps with the consistency sampler (inference/consistency.py) instead of 25 Euler steps,
so 8 UNet evaluations instead of 50. Its guidance rises over the frames from 1.0 to
`1 + (cfg_scale - 1) * 0.25`: the API's default cfg_scale 1.8 gives the authors' 1.2, and
guidance stays on exactly when cfg_scale > 1, as for every other model.
"""
from __future__ import annotations

from dataclasses import dataclass

SVD_XT_REPO = "stabilityai/stable-video-diffusion-img2vid-xt"
EULER, ANIMATELCM = "euler", "animatelcm"
SCHEDULERS = (EULER, ANIMATELCM)


@dataclass(frozen=True)
class Preset:
    name: str
    repo: str                          # the base pipeline on Hugging Face
    frames: int
    steps: int
    scheduler: str = EULER
    unet_repo: str | None = None       # a single-file UNet loaded over the base one
    unet_files: tuple[str, ...] = ()   # its file names, preferred first
    guidance_slope: float = 1.0        # max guidance = 1 + (cfg_scale - 1) * slope
    decode_chunk: int | None = None    # frames decoded at a time, at most (None: the profile's)
    licence: str = "Stability AI Community License"

    @property
    def few_step(self) -> bool:
        return self.scheduler == ANIMATELCM


PRESETS = {p.name: p for p in (
    Preset("svd-xt", SVD_XT_REPO, frames=25, steps=25),
    Preset("svd", "stabilityai/stable-video-diffusion-img2vid", frames=14, steps=25),
    Preset("svd-xt-1-1", "stabilityai/stable-video-diffusion-img2vid-xt-1-1", frames=25, steps=25),
    Preset("animatelcm-svd-xt", SVD_XT_REPO, frames=25, steps=4, scheduler=ANIMATELCM,
           unet_repo="wangfuyun/AnimateLCM-SVD-xt",
           unet_files=("AnimateLCM-SVD-xt-1.1.safetensors", "AnimateLCM-SVD-xt.safetensors"),
           guidance_slope=0.25, decode_chunk=4,
           licence="Stability AI Community License (base); AnimateLCM-SVD-xt: see its model card"),
)}
