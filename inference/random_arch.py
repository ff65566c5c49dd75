"""SVD-XT's architecture with random weights, for benchmarks and tests without the checkpoint.

- `svd-xt`: SVD-XT's exact architecture: the compute and memory of the real model
  (`SVD_MODEL=svd-xt-random`, `scripts/bench.py gpu`, tests/gpu).
- `svd-xt-narrow`: SVD-XT's block structure (the same block types, layers per block,
  attention heads, cross-attention width and conditioning) with half its channels
  and a small image encoder and VAE. Every code path that SVD-XT takes (step cache, memory
  profiles, batching, compiling, FP8-eligible linear layers) runs on it on a CPU in seconds.

Both are built directly in the requested dtype on the requested device (no float32 copy on the
way: SVD-XT in fp16 is about 4.2 GB, so it fits the 8 GiB cards the `low` profile is for), from
a fixed seed, so the same device gives the same weights in every run.
"""
from __future__ import annotations

import torch
from diffusers import (AutoencoderKLTemporalDecoder, StableVideoDiffusionPipeline,
                       UNetSpatioTemporalConditionModel)
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from inference.tiny import WEIGHTS_SEED, feature_extractor, scheduler, seeded_weights

ARCHS = ("svd-xt", "svd-xt-narrow")


def _components(arch: str):
    if arch == "svd-xt":
        unet = UNetSpatioTemporalConditionModel(sample_size=96, num_frames=25)
        vae = AutoencoderKLTemporalDecoder(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            layers_per_block=2, latent_channels=4, sample_size=768)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32,
            patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu"))
        return unet, vae, encoder
    if arch == "svd-xt-narrow":
        # SVD-XT's UNet config but for the channels, (160, 160, 320, 320) for (320, 640, 1280,
        # 1280): GroupNorm's 32 groups and the heads (5, 10, 20, 20), kept, allow no narrower.
        # Cross-attention stays 1024 wide, so the attention's key/value projections and the
        # deepest feed-forwards are FP8-eligible.
        unet = UNetSpatioTemporalConditionModel(
            sample_size=96, num_frames=25, block_out_channels=(160, 160, 320, 320))
        vae = AutoencoderKLTemporalDecoder(
            block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
            layers_per_block=1, latent_channels=4)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
            patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu"))
        return unet, vae, encoder
    raise ValueError(f"unknown architecture {arch!r}; one of {ARCHS}")


def build_random_pipeline(arch: str = "svd-xt", device: str = "cuda",
                          dtype: torch.dtype = torch.float16,
                          seed: int = WEIGHTS_SEED) -> StableVideoDiffusionPipeline:
    """The pipeline of `arch` with seeded random weights, created in `dtype` on `device`."""
    with seeded_weights(device, dtype, seed):
        unet, vae, encoder = _components(arch)
    pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=encoder, unet=unet,
                                        scheduler=scheduler(), feature_extractor=feature_extractor())
    pipe.set_progress_bar_config(disable=True)
    # A no-op for parameters; moves the few buffers a constructor made in float32.
    return pipe.to(device, dtype)


def build_svd_xt_random(device: str = "cuda", dtype: torch.dtype = torch.float16
                        ) -> StableVideoDiffusionPipeline:
    return build_random_pipeline("svd-xt", device, dtype)
