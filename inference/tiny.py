"""A random-weight Stable Video Diffusion pipeline small enough for a CPU.

Same pipeline class and the same code path as SVD-XT, with components a few thousand times
smaller. The weights are random but fixed (seeded), so the same request gives the same video
in every process. For development, tests and machines without a GPU: it never pretends to
be SVD-XT (see `inference.loader`).
"""
from __future__ import annotations

import contextlib

import torch
from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler,
                       StableVideoDiffusionPipeline, UNetSpatioTemporalConditionModel)
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

try:  # transformers >= 5 names the PIL-backed processor; older ones have only the one class
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # pragma: no cover
    from transformers import CLIPImageProcessor

# The VAE has six blocks, so it works at 1/32 of the image size: the UNet stays tiny even at
# 1024x576. Image sides must then be multiples of 32 (all of SVD's sizes are).
VAE_SCALE_FACTOR = 32
WEIGHTS_SEED = 20240101


def scheduler() -> EulerDiscreteScheduler:
    """SVD-XT's scheduler configuration."""
    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1,
        timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True,
        interpolation_type="linear")


def feature_extractor() -> CLIPImageProcessor:
    return CLIPImageProcessor(
        crop_size=224, size=224, do_center_crop=True, resample=3,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711])


@contextlib.contextmanager
def seeded_weights(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   seed: int = WEIGHTS_SEED):
    """Modules constructed inside are created on `device` in `dtype` from `seed`: the same
    weights every time on that device, and the caller's random state left as it was."""
    device = torch.device(device)
    if device.type == "cuda":
        rng_devices = [device.index or 0]
    else:
        rng_devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    before = torch.get_default_dtype()
    with torch.random.fork_rng(devices=rng_devices), torch.device(device):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(before)


def build_tiny_pipeline() -> StableVideoDiffusionPipeline:
    """The tiny pipeline on the CPU in float32, with the same weights every time."""
    with seeded_weights():
        unet = UNetSpatioTemporalConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=32,
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
            cross_attention_dim=32, num_attention_heads=8,
            projection_class_embeddings_input_dim=96, addition_time_embed_dim=32)
        vae = AutoencoderKLTemporalDecoder(
            block_out_channels=(32,) * 6, down_block_types=("DownEncoderBlock2D",) * 6,
            layers_per_block=1, latent_channels=4)
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, image_size=224, patch_size=14))
    pipe = StableVideoDiffusionPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler(),
        feature_extractor=feature_extractor())
    pipe.set_progress_bar_config(disable=True)
    return pipe
