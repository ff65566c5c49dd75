"""SVD-XT's exact architecture with random weights: the compute and memory of the real
checkpoint without downloading it, for benchmarks and GPU tests (`--arch svd-xt-random`)."""
from __future__ import annotations

import torch
from diffusers import (AutoencoderKLTemporalDecoder, StableVideoDiffusionPipeline,
                       UNetSpatioTemporalConditionModel)
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from inference.tiny import feature_extractor, scheduler


def build_svd_xt_random(device: str = "cuda", dtype=torch.float16) -> StableVideoDiffusionPipeline:
    with torch.device(device):
        unet = UNetSpatioTemporalConditionModel(sample_size=96, num_frames=25)
        vae = AutoencoderKLTemporalDecoder(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            layers_per_block=2, latent_channels=4, sample_size=768)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32,
            patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu"))
    pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=encoder, unet=unet,
                                        scheduler=scheduler(), feature_extractor=feature_extractor())
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)
