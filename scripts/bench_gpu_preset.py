"""`scripts/bench.py gpu --preset NAME`: what the few-step preset's row needs besides the
Bench class (scripts/bench_gpu.py): the option, the row's name, and whether its target holds."""
from __future__ import annotations

import argparse

from inference.presets import PRESETS

# --preset: a few-step preset's seconds per video at most this share of plain diffusers' at
# 25 steps (SVD-XT's architecture, 1024x576, 25 frames, a GPU). 4 steps of 2 UNet calls are
# 0.16 of 25 steps' UNet work; the image encode, the decode and the MP4 come on top.
PRESET_TARGET_RATIO = 0.18
PRESET_TARGET_STEPS = 25
FEW_STEP_PRESETS = tuple(name for name, p in PRESETS.items() if p.few_step)


def preset_arg(name: str) -> str:
    """--preset: the name of a few-step preset."""
    known = ", ".join(FEW_STEP_PRESETS)
    if name not in PRESETS:
        raise argparse.ArgumentTypeError(f"unknown preset {name!r}; few-step presets: {known}")
    if name not in FEW_STEP_PRESETS:
        p = PRESETS[name]
        raise argparse.ArgumentTypeError(
            f"{name!r} samples as plain diffusers does ({p.steps} Euler steps): its row would "
            f"be the full run's; few-step presets: {known}")
    return name


def preset_name(preset, arch: str) -> str:
    """The preset's row: what it samples with, and whose weights (never the preset's own)."""
    weights = {"tiny": "tiny model's random weights",
               "svd-xt-random": "SVD-XT architecture's random weights"}.get(
        arch, f"UNet weights of {arch}")
    return (f"svd-server {preset.name} ({preset.steps} steps, consistency sampler; {weights}, "
            f"not AnimateLCM's)")


def judge_preset(ratio: float | None, device: str, arch: str, baseline_steps: int):
    """(PASS True / MISS False / None, why not judged): the target holds for SVD-XT's
    architecture on CUDA against plain diffusers' 25 steps. The tiny model's time is not its
    UNet's, and --quick's baseline takes 2 steps: a ratio there says nothing of the target."""
    if ratio is None:
        return None, "not judged: no plain diffusers time"
    if not device.startswith("cuda") or arch == "tiny" or baseline_steps != PRESET_TARGET_STEPS:
        return None, (f"not judged: {arch} on {device}, plain {baseline_steps} steps; the target "
                      f"is SVD-XT on a GPU vs plain {PRESET_TARGET_STEPS} steps")
    return ratio <= PRESET_TARGET_RATIO, None
