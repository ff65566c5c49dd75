"""Which model to run, decided before anything heavy is loaded, and loading it.

`SVD_MODEL` values:
- `auto`: SVD-XT when a CUDA device and its weights are present; the tiny random-weight
  model when there is no CUDA device (loudly: a warning at start, in /readyz and in the
  x-svd-model header); an error with instructions when there is CUDA but no weights, since a
  GPU box must never serve random noise as a successful video.
- `tiny`: the tiny model, on purpose.
- `svd-xt-random`: SVD-XT's architecture with random weights, for benchmarks (noise videos).
- a preset name (inference/presets.py: `svd-xt`, `svd`, `svd-xt-1-1`, `animatelcm-svd-xt`):
  its base pipeline and UNet from the Hugging Face cache, its sampler and defaults.
- a local directory or a Hugging Face repo id: exactly that, or an error saying why not.

`SVD_UNET` (a single-file .safetensors UNet, or a diffusers `unet/` folder) is loaded over
the base model's UNet, any model's, strictly: a file that does not fit stops the start.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from inference.presets import ANIMATELCM, EULER, PRESETS, SCHEDULERS, SVD_XT_REPO, Preset
from inference.svd import SVD_XT_FRAMES, SVD_XT_STEPS

log = logging.getLogger(__name__)

# Tiny-model defaults, measured on a 2-core CPU with one torch thread so that a first
# 1024x576 request answers within a minute (the full-size VAE decode dominates).
TINY_DEFAULT_FRAMES = 6
TINY_DEFAULT_STEPS = 2


# SVD-XT's architecture with random weights: its speed and memory without its weights, for
# benchmarks on a GPU (`SVD_MODEL=svd-xt-random`); its videos are noise, and say so.
RANDOM_ARCH = "svd-xt-random"


class ModelUnavailable(RuntimeError):
    """The configured model cannot be served; the message tells the operator what to do."""


# A few-step model's guidance, from the request's cfg_scale (see inference/presets.py).
GUIDANCE_SLOPES = {EULER: 1.0, ANIMATELCM: 0.25}


@dataclass(frozen=True)
class ModelChoice:
    kind: str                   # "svd" | "tiny" | "svd-xt-random"
    source: str | None          # directory or repo id for "svd"
    device: str                 # "cuda" | "cpu"
    fallback_reason: str | None = None   # set when `auto` fell back to the tiny model
    preset: Preset | None = None         # SVD_MODEL named a preset
    unet: str | None = None              # a UNet file loaded over the base's

    @property
    def label(self) -> str:
        """Short value for the x-svd-model header."""
        if self.kind == "tiny":
            label = "tiny-random" + ("; fallback=no-cuda" if self.fallback_reason else "")
        elif self.kind == RANDOM_ARCH:
            label = "svd-xt-random; random-weights"
        elif self.preset is not None:
            label = self.preset.name
        else:
            label = self.source or "svd"
        # A UNet of one's own is named; a preset's own is part of the preset.
        if self.unet and (self.preset is None or Path(self.unet).name not in self.preset.unet_files):
            label += f"; unet={Path(self.unet).name}"
        return label


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def _is_model_dir(path: Path) -> bool:
    return (path / "model_index.json").is_file()


def _in_hf_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    found = try_to_load_from_cache(repo_id, "model_index.json")
    return isinstance(found, str)


def _weights_help(repo_id: str, preset: str | None = None) -> str:
    fetch = f"--preset {preset}" if preset else f"--repo {repo_id}"
    return (f"The weights of {repo_id} were not found in the Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}). The repository is gated: accept "
            f"its licence on Hugging Face, then run `HF_TOKEN=hf_... python scripts/download_weights.py "
            f"{fetch}` (or `--local-dir DIR` and set SVD_MODEL=DIR). To run the tiny random-weight "
            "test model instead, set SVD_MODEL=tiny.")


def resolve_model(spec: str, cuda: bool | None = None, unet: str = "") -> ModelChoice:
    """Decide what `spec` (SVD_MODEL) and `unet` (SVD_UNET) mean on this machine. Raises
    ModelUnavailable with instructions."""
    choice = _resolve_base(spec, cuda)
    if unet:
        path = Path(unet).expanduser()
        if not path.exists():
            raise ModelUnavailable(f"SVD_UNET={unet}: no such file or folder (expected a "
                                   "single-file .safetensors UNet or a diffusers unet/ folder).")
        return replace(choice, unet=str(path.resolve()))
    if choice.preset is not None and choice.preset.unet_repo:
        return replace(choice, unet=_cached_preset_unet(choice.preset))
    return choice


def _cached_preset_unet(preset: Preset) -> str:
    from huggingface_hub import try_to_load_from_cache
    for name in preset.unet_files:
        found = try_to_load_from_cache(preset.unet_repo, name)
        if isinstance(found, str):
            return found
    raise ModelUnavailable(
        f"SVD_MODEL={preset.name} needs {preset.unet_files[0]} from {preset.unet_repo}, not "
        f"found in the Hugging Face cache. Run `python scripts/download_weights.py --preset "
        f"{preset.name}`, or point SVD_UNET at the file.")


def _resolve_base(spec: str, cuda: bool | None) -> ModelChoice:
    cuda = _cuda_available() if cuda is None else cuda
    device = "cuda" if cuda else "cpu"
    spec = (spec or "auto").strip()
    if spec in PRESETS:
        preset = PRESETS[spec]
        if not _in_hf_cache(preset.repo):
            raise ModelUnavailable(_weights_help(preset.repo, preset.name))
        return ModelChoice("svd", preset.repo, device, preset=preset)
    if spec == "tiny":
        return ModelChoice("tiny", None, device)
    if spec == RANDOM_ARCH:
        return ModelChoice(RANDOM_ARCH, None, device)
    if spec == "auto":
        if not cuda:
            return ModelChoice("tiny", None, "cpu", fallback_reason=(
                "no CUDA device: serving the tiny RANDOM-WEIGHT model; its videos are noise, "
                "not SVD-XT. Set SVD_MODEL=tiny to silence this, or run on an NVIDIA GPU."))
        if _in_hf_cache(SVD_XT_REPO):
            return ModelChoice("svd", SVD_XT_REPO, device)
        raise ModelUnavailable(_weights_help(SVD_XT_REPO))
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")):
        if not _is_model_dir(path):
            raise ModelUnavailable(f"SVD_MODEL={spec}: no diffusers model here (expected "
                                   f"{path / 'model_index.json'}).")
        return ModelChoice("svd", str(path.resolve()), device)
    if spec.count("/") == 1:
        if not _in_hf_cache(spec):
            raise ModelUnavailable(_weights_help(spec))
        return ModelChoice("svd", spec, device)
    raise ModelUnavailable(f"SVD_MODEL={spec!r} is neither 'auto', 'tiny', a preset "
                           f"({', '.join(PRESETS)}), a directory nor a Hugging Face repo id "
                           "(owner/name).")


def sampling_options(scheduler: str, preset: Preset | None = None) -> dict:
    """SvdGenerator's sampling arguments for a sampler name (SVD_SCHEDULER or the preset's):
    the sampler itself (None: the pipeline's Euler), its guidance slope, the preset's decode
    chunk."""
    sampler = None
    if scheduler == ANIMATELCM:
        from inference.consistency import ConsistencyScheduler
        sampler = ConsistencyScheduler()
    return {"scheduler": sampler, "guidance_slope": GUIDANCE_SLOPES[scheduler],
            "max_decode_chunk": preset.decode_chunk if preset else None}


def configure_cpu_threads(threads: int) -> None:
    """On a CPU, torch uses `threads` cores (0: all but one, leaving one to the web server)."""
    import torch
    torch.set_num_threads(threads if threads > 0 else max(1, (os.cpu_count() or 2) - 1))


def load_generator(choice: ModelChoice, num_frames: int | None = None, steps: int | None = None,
                   cpu_threads: int = 0, memory_profile: str = "auto", mode: str = "quality",
                   compile: str = "off", step_cache: int | None = None, fp8: str = "auto",
                   cache_dir: Path | None = None, warmup: str = "auto",
                   warmup_sizes: tuple[tuple[int, int], ...] = (), max_batch: int = 1,
                   scheduler: str = ""):
    """Build the VideoGenerator for `choice`. `num_frames`/`steps` override the model's
    defaults; the speed options are inference.speed's (SVD_MODE, SVD_COMPILE, ...);
    `scheduler` (SVD_SCHEDULER) overrides the preset's sampler, Euler without a preset."""
    from inference.speed import FAST_STEPS, resolve
    from inference.svd import SvdGenerator, load_pretrained, model_frames

    preset = choice.preset
    scheduler = scheduler or (preset.scheduler if preset else EULER)
    if scheduler not in SCHEDULERS:
        raise ModelUnavailable(f"SVD_SCHEDULER={scheduler!r}: use one of {', '.join(SCHEDULERS)}")
    few_step = scheduler == ANIMATELCM
    if few_step and step_cache is None:
        step_cache = 1                  # 4 steps leave nothing to cache (not measured to help)
    if choice.device == "cpu":
        configure_cpu_threads(cpu_threads)
    speed = resolve(mode, compile, step_cache, fp8, choice.device, cache_dir)
    if choice.kind == "tiny":
        from inference.tiny import build_tiny_pipeline
        pipe = build_tiny_pipeline().to(choice.device)
        description = f"tiny random-weight SVD ({choice.device})"
        frames, default_steps = TINY_DEFAULT_FRAMES, TINY_DEFAULT_STEPS
    elif choice.kind == "svd-xt-random":
        import torch

        from inference.random_arch import build_svd_xt_random
        # fp16 on a GPU, as the real checkpoint; a CPU has no fp16 kernels for all of it.
        pipe = build_svd_xt_random(choice.device, torch.float16 if choice.device == "cuda"
                                   else torch.float32)
        description = f"SVD-XT architecture, RANDOM weights ({choice.device})"
        frames, default_steps = SVD_XT_FRAMES, SVD_XT_STEPS
    else:
        try:
            pipe, description = load_pretrained(choice.source, choice.device)
        except Exception as exc:
            raise ModelUnavailable(f"could not load {choice.source}: {exc}") from exc
        frames, default_steps = model_frames(pipe), SVD_XT_STEPS
    if choice.unet:
        from inference.unet_file import UNetFileError, load_unet_weights
        try:
            load_unet_weights(pipe.unet, choice.unet)
        except UNetFileError as exc:
            raise ModelUnavailable(f"SVD_UNET={choice.unet}: {exc}") from None
        description += f" + UNet {Path(choice.unet).name}"
    if preset is not None:
        description = f"{preset.name}: {description}"
        frames, default_steps = preset.frames, preset.steps
    if few_step:
        description += ", consistency sampler"
    gen = SvdGenerator(pipe, choice.device, description, default_frames=frames,
                       default_steps=default_steps, speed=speed,
                       **sampling_options(scheduler, preset))
    gen.set_profile(memory_profile)
    if num_frames:
        gen.default_frames = num_frames
    if steps:
        gen.default_steps = steps
    elif mode == "fast" and choice.kind != "tiny" and not few_step:
        gen.default_steps = FAST_STEPS
    if warmup == "on" or (warmup == "auto" and speed.compiled):
        sizes, t0 = list(warmup_sizes) or [(1024, 576)], time.monotonic()
        gen.warm_up(sizes, max_batch=max_batch)
        log.info("warmed up for %s in %.1f s", ", ".join(f"{w}x{h}" for w, h in sizes),
                 time.monotonic() - t0)
    return gen
