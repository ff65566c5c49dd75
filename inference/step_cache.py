"""Step caching for the SVD UNet (UNetSpatioTemporalConditionModel), after DeepCache
(Ma et al. 2023, "DeepCache: Accelerating Diffusion Models for Free").

The deep features of a UNet change slowly from one denoising step to the next. A *full* step
runs the whole UNet and keeps the input of the last up block (the output of the up block
before it). A *cached* step runs only the shallow part:

    time and added-time embeddings -> conv_in -> down_blocks[0]
    -> up_blocks[-1] (fed by the kept deep features plus the fresh skip connections of
       conv_in and down_blocks[0]) -> conv_norm_out -> conv_act -> conv_out

and skips down_blocks[1:], mid_block and up_blocks[:-1].

Both paths mirror `UNetSpatioTemporalConditionModel.forward` (diffusers 0.3x/0.4x): batch and
frames flattened into one axis, embeddings repeated per frame, an all-zero
image_only_indicator, cross-attention blocks told apart by `has_cross_attention`, skip
connections consumed from the end of the list.

Usage (one StepCache per UNet, `reset()` before every video):

    cache = StepCache(pipe.unet, interval=3)
    cache.reset()
    for step, t in enumerate(timesteps):
        noise_pred = cache(latents_in, t, image_embeddings, added_time_ids,
                           step=step, total_steps=len(timesteps))

Devices and offloading: the blocks are taken from the module (through `_orig_mod` when the
UNet was wrapped by `torch.compile`), so a replaced `unet.forward` is never relied on. Calling
submodules directly would bypass a hook that accelerate puts on `unet.forward` (the pipeline's
`enable_model_cpu_offload`, which moves the UNet to the GPU on its first call), so StepCache runs
that hook itself, exactly as accelerate's wrapped forward does: `pre_forward` (moves the model
and the inputs to the execution device), the computation (under no_grad if the hook asks for
it), `post_forward`. With interval 1 it simply calls `unet(...)`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

try:
    from diffusers.utils.torch_utils import maybe_adjust_dtype_for_device
except ImportError:  # pragma: no cover - older diffusers
    def maybe_adjust_dtype_for_device(dtype, device):
        if device.type in ("mps", "npu") and dtype == torch.float64:
            return torch.float32
        if device.type in ("mps", "npu") and dtype == torch.int64:
            return torch.int32
        return dtype

__all__ = ["StepCache", "unet_forward_split", "unet_forward_shallow"]


def _base(unet: nn.Module) -> nn.Module:
    """The UNet module itself: `torch.compile` wraps it in an OptimizedModule (`_orig_mod`)."""
    return getattr(unet, "_orig_mod", unet)


@dataclass
class _Prepared:
    """What every block call needs, computed as at the top of the UNet's forward."""
    sample: torch.Tensor                 # conv_in output, (batch * frames, C, H, W)
    emb: torch.Tensor                    # (batch * frames, temb)
    encoder_hidden_states: torch.Tensor  # (batch * frames, seq, cross_attention_dim)
    image_only_indicator: torch.Tensor   # zeros (batch, frames)
    batch_size: int
    num_frames: int
    forward_upsample_size: bool


def _prepare(unet, sample, timestep, encoder_hidden_states, added_time_ids) -> _Prepared:
    """Steps 1-2 of the forward: embeddings, flattening, conv_in."""
    default_overall_up_factor = 2 ** unet.num_upsamplers
    forward_upsample_size = any(s % default_overall_up_factor != 0 for s in sample.shape[-2:])

    timesteps = timestep
    if not torch.is_tensor(timesteps):
        dtype = maybe_adjust_dtype_for_device(
            torch.float64 if isinstance(timestep, float) else torch.int64, sample.device)
        timesteps = torch.tensor([timesteps], dtype=dtype, device=sample.device)
    elif len(timesteps.shape) == 0:
        timesteps = timesteps[None].to(sample.device)

    batch_size, num_frames = sample.shape[:2]
    timesteps = timesteps.expand(batch_size)

    t_emb = unet.time_proj(timesteps)
    t_emb = t_emb.to(dtype=sample.dtype)
    emb = unet.time_embedding(t_emb)

    time_embeds = unet.add_time_proj(added_time_ids.flatten())
    time_embeds = time_embeds.reshape((batch_size, -1))
    time_embeds = time_embeds.to(emb.dtype)
    aug_emb = unet.add_embedding(time_embeds)
    emb = emb + aug_emb

    sample = sample.flatten(0, 1)
    emb = emb.repeat_interleave(num_frames, dim=0, output_size=emb.shape[0] * num_frames)
    encoder_hidden_states = encoder_hidden_states.repeat_interleave(
        num_frames, dim=0, output_size=encoder_hidden_states.shape[0] * num_frames)

    sample = unet.conv_in(sample)
    image_only_indicator = torch.zeros(batch_size, num_frames, dtype=sample.dtype,
                                       device=sample.device)
    return _Prepared(sample, emb, encoder_hidden_states, image_only_indicator,
                     batch_size, num_frames, forward_upsample_size)


def _down(block, hidden_states, p: _Prepared):
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=hidden_states, temb=p.emb,
                     encoder_hidden_states=p.encoder_hidden_states,
                     image_only_indicator=p.image_only_indicator)
    return block(hidden_states=hidden_states, temb=p.emb,
                 image_only_indicator=p.image_only_indicator)


def _up(block, hidden_states, res_samples, upsample_size, p: _Prepared):
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=hidden_states, temb=p.emb, res_hidden_states_tuple=res_samples,
                     encoder_hidden_states=p.encoder_hidden_states,
                     upsample_size=upsample_size, image_only_indicator=p.image_only_indicator)
    return block(hidden_states=hidden_states, temb=p.emb, res_hidden_states_tuple=res_samples,
                 upsample_size=upsample_size, image_only_indicator=p.image_only_indicator)


def _post(unet, hidden_states, p: _Prepared) -> torch.Tensor:
    """Step 6-7: output convolution and back to (batch, frames, C, H, W)."""
    hidden_states = unet.conv_norm_out(hidden_states)
    hidden_states = unet.conv_act(hidden_states)
    hidden_states = unet.conv_out(hidden_states)
    return hidden_states.reshape(p.batch_size, p.num_frames, *hidden_states.shape[1:])


def unet_forward_split(unet, sample, timestep, encoder_hidden_states, added_time_ids
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The full UNet forward, returning `(output, deep)`.

    `output` is what `unet(sample, timestep, encoder_hidden_states, added_time_ids).sample`
    returns; `deep` is the hidden state fed to the last up block (the output of the up block
    before it), the feature a cached step reuses. Runs no accelerate hook (see StepCache).
    """
    unet = _base(unet)
    p = _prepare(unet, sample, timestep, encoder_hidden_states, added_time_ids)

    hidden_states = p.sample
    down_block_res_samples = (hidden_states,)
    for block in unet.down_blocks:
        hidden_states, res_samples = _down(block, hidden_states, p)
        down_block_res_samples += res_samples

    hidden_states = unet.mid_block(
        hidden_states=hidden_states, temb=p.emb, encoder_hidden_states=p.encoder_hidden_states,
        image_only_indicator=p.image_only_indicator)

    upsample_size = None
    deep = hidden_states
    for i, block in enumerate(unet.up_blocks):
        is_final_block = i == len(unet.up_blocks) - 1
        res_samples = down_block_res_samples[-len(block.resnets):]
        down_block_res_samples = down_block_res_samples[:-len(block.resnets)]
        if not is_final_block and p.forward_upsample_size:
            upsample_size = down_block_res_samples[-1].shape[2:]
        if is_final_block:
            deep = hidden_states
        hidden_states = _up(block, hidden_states, res_samples, upsample_size, p)

    return _post(unet, hidden_states, p), deep


def unet_forward_shallow(unet, deep, sample, timestep, encoder_hidden_states, added_time_ids
                         ) -> torch.Tensor:
    """The cached step: embeddings, conv_in, down_blocks[0], then up_blocks[-1] on `deep` (from
    `unet_forward_split` at an earlier step) with fresh skip connections, and the output convs.

    With `deep` from `unet_forward_split` on the same inputs it returns the same output.
    Runs no accelerate hook (see StepCache).
    """
    unet = _base(unet)
    _check_cacheable(unet)
    p = _prepare(unet, sample, timestep, encoder_hidden_states, added_time_ids)

    last = unet.up_blocks[-1]
    _, res_samples = _down(unet.down_blocks[0], p.sample, p)
    # The last up block consumes the first len(last.resnets) skip connections: conv_in's output
    # and those of down_blocks[0] (never its downsampler's, which feeds the up block before).
    skips = ((p.sample,) + tuple(res_samples))[:len(last.resnets)]
    # The forward leaves upsample_size as the up block before last set it (only used if the
    # last up block upsamples, which in diffusers' SVD UNet it never does).
    upsample_size = None
    if p.forward_upsample_size and len(unet.up_blocks) > 1:
        upsample_size = skips[-1].shape[2:]
    hidden_states = _up(last, deep, skips, upsample_size, p)
    return _post(unet, hidden_states, p)


def _check_cacheable(unet) -> None:
    """The last up block must take its skip connections from conv_in and down_blocks[0] only."""
    first = unet.down_blocks[0]
    available = 1 + len(first.resnets)  # conv_in + one per resnet, before the downsampler
    needed = len(unet.up_blocks[-1].resnets)
    if needed > available:
        raise ValueError(
            f"step cache: the last up block takes {needed} skip connections but conv_in and the "
            f"first down block give {available} before downsampling")


class StepCache:
    """Wraps a UNetSpatioTemporalConditionModel; call like
    `unet(sample, timestep, encoder_hidden_states, added_time_ids)` plus `step`, `total_steps`
    and, where one step calls the UNet more than once, `branch`, and get the output tensor
    (no return_dict).

    A step runs the full UNet when the interval is 1, nothing is cached yet, the input's shape,
    dtype or device differs from the cached step's, `step % interval == 0`, or it is the last
    step (`step == total_steps - 1`); otherwise it runs the shallow path on the deep features of
    the last full step.

    Each `branch` keeps its own deep features: when the two halves of classifier-free guidance
    run one after the other (branch 0 unconditional, branch 1 conditional), a cached step of
    one half must reuse that half's features, never the other's. Both halves take the same
    full/cached decision, so the two orders agree with the batched halves to float rounding.
    `full_steps` and `cached_steps` count denoising steps since the last reset() (branch 0's
    calls), whatever the number of branches. The cache is not keyed on the conditioning: call
    `reset()` before every new video or batch.
    """

    def __init__(self, unet: nn.Module, interval: int):
        interval = int(interval)
        if interval < 1:
            raise ValueError(f"step cache interval must be >= 1, got {interval}")
        self.unet = unet
        self.interval = interval
        if interval > 1:
            _check_cacheable(_base(unet))
        self.reset()

    def reset(self) -> None:
        """Forget the cached features and zero the counters; the next step is full."""
        self._deep: dict[int, torch.Tensor] = {}
        self._key: dict[int, tuple] = {}
        self.full_steps = 0
        self.cached_steps = 0

    def is_full_step(self, step: int, total_steps: int, sample: torch.Tensor | None = None,
                     branch: int = 0) -> bool:
        """Whether __call__ would run the full UNet for this step (and sample, and branch)."""
        if self.interval == 1 or branch not in self._deep:
            return True
        if sample is not None and self._key[branch] != _key(sample):
            return True
        return step % self.interval == 0 or step >= total_steps - 1

    def __call__(self, sample, timestep, encoder_hidden_states, added_time_ids, step: int,
                 total_steps: int, branch: int = 0) -> torch.Tensor:
        if self.interval == 1:
            self._count(branch, full=True)
            return self.unet(sample, timestep, encoder_hidden_states, added_time_ids,
                             return_dict=False)[0]

        base = _base(self.unet)
        hook = getattr(base, "_hf_hook", None)
        grad = contextlib.nullcontext()
        if hook is not None:
            # What accelerate's wrapped forward does around the module's own forward.
            args, kwargs = hook.pre_forward(base, sample, timestep, encoder_hidden_states,
                                            added_time_ids)
            sample, timestep, encoder_hidden_states, added_time_ids = args
            if getattr(hook, "no_grad", False):
                grad = torch.no_grad()

        with grad:
            if self.is_full_step(step, total_steps, sample, branch):
                out, self._deep[branch] = unet_forward_split(base, sample, timestep,
                                                             encoder_hidden_states, added_time_ids)
                self._key[branch] = _key(sample)
                self._count(branch, full=True)
            else:
                out = unet_forward_shallow(base, self._deep[branch], sample, timestep,
                                           encoder_hidden_states, added_time_ids)
                self._count(branch, full=False)

        if hook is not None:
            out = hook.post_forward(base, out)
        return out

    def _count(self, branch: int, full: bool) -> None:
        if branch == 0:
            if full:
                self.full_steps += 1
            else:
                self.cached_steps += 1


def _key(sample: torch.Tensor) -> tuple:
    return tuple(sample.shape), sample.dtype, sample.device
