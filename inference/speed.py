"""What makes the UNet faster or leaner, each behind its own setting (docs/performance.md).

- compile: torch.compile of the UNet's blocks ("regional" compilation). Blocks of one class
  share their compiled code, so compiling takes a fraction of compiling the whole UNet, and
  the step cache (which calls blocks directly) runs compiled too. Artefacts go to a cache
  directory in the data dir, so a restart loads them instead of compiling again.
- fp8: the UNet's large linear layers as FP8 matmuls (torchao, Hopper/Ada GPUs only), with
  per-tensor scales: the model runs in fp16, and torchao's per-row scaling takes bf16 weights
  only.
- feed-forward chunking: the transformer blocks' feed-forward in a few slices, for memory.
- step cache: see inference/step_cache.py.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

COMPILE_MODES = {"on": "default", "max": "max-autotune-no-cudagraphs"}
# Fast mode's step cache: full UNet on every third step, shallow blocks only in between.
FAST_STEP_CACHE = 3
# Fast mode's default number of steps for SVD-XT (the quality default is 25); a request's
# own `steps` still wins.
FAST_STEPS = 14
FEED_FORWARD_CHUNKS = 8
# Each compiled block class keeps one specialisation per input shape: sizes x batch shapes.
RECOMPILE_LIMIT = 64


@dataclass(frozen=True)
class SpeedOptions:
    compile: str = "off"           # off | on | max
    step_cache: int = 1            # 1: every step runs the whole UNet
    fp8: bool = False
    cache_dir: Path | None = None  # torch.compile's artefacts
    # inductor generates the kernels; "eager" captures the same graphs without generating
    # code, which is how the tests reach the compiled paths on a CPU in seconds.
    compile_backend: str = "inductor"

    @property
    def compiled(self) -> bool:
        return self.compile != "off"


def fp8_unavailable(device: str) -> str | None:
    """Why FP8 matmuls cannot run here, or None when they can."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return "FP8 needs an NVIDIA GPU"
    if torch.cuda.get_device_capability() < (8, 9):
        return f"FP8 needs an Ada or Hopper GPU; this one is {torch.cuda.get_device_name()}"
    try:
        import torchao  # noqa: F401
    except ImportError:
        return "FP8 needs torchao (the [gpu] extra: pip install 'svd-server[gpu]')"
    return None


def resolve(mode: str, compile: str = "off", step_cache: int | None = None, fp8: str = "auto",
            device: str = "cpu", cache_dir: Path | None = None) -> SpeedOptions:
    """The settings (SVD_MODE, SVD_COMPILE, SVD_STEP_CACHE, SVD_FP8) as options for `device`."""
    fast = mode == "fast"
    interval = step_cache if step_cache is not None else (FAST_STEP_CACHE if fast else 1)
    use_fp8 = False
    if fp8 == "on" or (fp8 == "auto" and fast):
        reason = fp8_unavailable(device)
        if reason and fp8 == "on":
            raise ValueError(f"SVD_FP8=on: {reason}")
        use_fp8 = reason is None
        if reason:
            log.info("fast mode without FP8: %s", reason)
    # FP8 matmuls are only fast once compiled (quantisation fuses into the kernels).
    if use_fp8 and compile == "off":
        compile = "on"
    return SpeedOptions(compile=compile, step_cache=interval, fp8=use_fp8, cache_dir=cache_dir)


def unet_blocks(unet) -> list[nn.Module]:
    return [*unet.down_blocks, unet.mid_block, *unet.up_blocks]


def compile_unet(unet, mode: str, cache_dir: Path | None, backend: str = "inductor") -> None:
    """Compile every block of the UNet in place (module.compile); shapes are static."""
    if cache_dir is not None:
        # Read by inductor each time it looks for an artefact; set before the first compile.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir / "inductor")
        os.environ["TRITON_CACHE_DIR"] = str(cache_dir / "triton")
    import torch._dynamo
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit,
                                               RECOMPILE_LIMIT)
    for block in unet_blocks(unet):
        if backend == "inductor":
            block.compile(mode=COMPILE_MODES[mode], dynamic=False)
        else:
            block.compile(backend=backend, dynamic=False)


def fp8_eligible(module: nn.Module, name: str = "") -> bool:
    """FP8 GEMMs need dimensions divisible by 16; tiny projections gain nothing."""
    return (isinstance(module, nn.Linear) and module.in_features % 16 == 0
            and module.out_features % 16 == 0 and module.in_features >= 512)


def apply_fp8(unet) -> int:
    """Swap the UNet's large linear layers for FP8 matmuls (dynamic activation scales, one
    scale per tensor for activations and weights). Returns how many were converted.

    Per-tensor, not per-row: torchao's per-row recipe asserts bfloat16 weights, and the
    pipeline runs in float16 (converting the FP8 layers to bf16 would put a dtype boundary
    around every one of them)."""
    from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig, PerTensor,
                                      quantize_)

    count = sum(1 for name, m in unet.named_modules() if fp8_eligible(m, name))
    quantize_(unet, Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor()),
              filter_fn=fp8_eligible)
    return count


class ChunkedFeedForward(nn.Module):
    """A transformer block's feed-forward applied to a few slices of its input in turn, so
    its wide hidden activation (2.4 GB in SVD-XT's first block at 1024x576 with guidance)
    exists for one slice at a time. diffusers' own chunking cuts into slices of one (50
    feed-forward calls per spatial block, 25 per temporal block and step); a few larger
    slices save nearly as much memory with far fewer, better-shaped matmuls."""

    def __init__(self, ff: nn.Module, chunks: int = FEED_FORWARD_CHUNKS):
        super().__init__()
        self.ff = ff
        self.chunks = chunks

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.shape[0] < 2:
            return self.ff(hidden_states)
        return torch.cat([self.ff(part) for part in hidden_states.chunk(self.chunks, dim=0)])


def set_feed_forward_chunking(unet, on: bool, chunks: int = FEED_FORWARD_CHUNKS) -> None:
    """Wrap (or unwrap) the feed-forwards of every transformer block of the UNet."""
    for module in unet.modules():
        if not hasattr(module, "set_chunk_feed_forward"):      # the transformer blocks
            continue
        for name in ("ff", "ff_in"):
            ff = getattr(module, name, None)
            if ff is None:
                continue
            if on and not isinstance(ff, ChunkedFeedForward):
                setattr(module, name, ChunkedFeedForward(ff, chunks))
            elif not on and isinstance(ff, ChunkedFeedForward):
                setattr(module, name, ff.ff)
