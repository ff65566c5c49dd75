"""StepCache on the tiny random-weight SVD UNet (CPU, float32)."""
from __future__ import annotations

import pytest
import torch

from inference.step_cache import StepCache, unet_forward_shallow, unet_forward_split
from inference.tiny import build_tiny_pipeline

FRAMES = 2


@pytest.fixture(scope="module")
def unet():
    return build_tiny_pipeline().unet.eval()


def make_inputs(unet, seed: int, batch: int = 2, height: int = 8, width: int = 8):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, FRAMES, unet.config.in_channels, height, width, generator=g)
    timestep = torch.rand((), generator=g) * 2 - 1  # SVD's continuous timesteps, 0.25*log(sigma)
    encoder_hidden_states = torch.randn(batch, 1, unet.config.cross_attention_dim, generator=g)
    added_time_ids = torch.tensor([[6.0, 127.0, 0.02]] * batch)
    return sample, timestep, encoder_hidden_states, added_time_ids


def plain(unet, inputs):
    return unet(*inputs).sample


class BlockCounter:
    """Counts forward calls of the deep blocks (everything a cached step skips)."""

    def __init__(self, unet):
        self.calls = 0
        deep = list(unet.down_blocks[1:]) + [unet.mid_block] + list(unet.up_blocks[:-1])
        self.handles = [m.register_forward_hook(self._hook) for m in deep]

    def _hook(self, *_):
        self.calls += 1

    def remove(self):
        for h in self.handles:
            h.remove()


@torch.no_grad()
@pytest.mark.parametrize("size", [(8, 8), (9, 7)])  # 9x7 forces the upsample size
def test_split_forward_equals_unet(unet, size):
    inputs = make_inputs(unet, 0, height=size[0], width=size[1])
    out, deep = unet_forward_split(unet, *inputs)
    assert torch.equal(out, plain(unet, inputs))
    assert deep.shape == (2 * FRAMES, unet.config.block_out_channels[1], *size)
    # Same inputs, same deep features: the shallow path gives the same output, so its skip
    # connections are wired as in the full forward.
    assert torch.equal(unet_forward_shallow(unet, deep, *inputs), out)


@torch.no_grad()
def test_interval_one_is_the_plain_unet(unet):
    cache = StepCache(unet, interval=1)
    for step in range(4):
        inputs = make_inputs(unet, step)
        assert torch.equal(cache(*inputs, step=step, total_steps=4), plain(unet, inputs))
    assert (cache.full_steps, cache.cached_steps) == (4, 0)


@torch.no_grad()
def test_interval_three_schedule_and_savings(unet):
    cache = StepCache(unet, interval=3)
    counter = BlockCounter(unet)
    deep_calls = []
    outputs = []
    try:
        for step in range(6):
            inputs = make_inputs(unet, 10 + step)
            before = counter.calls
            outputs.append(cache(*inputs, step=step, total_steps=6))
            deep_calls.append(counter.calls - before)
    finally:
        counter.remove()
    n_deep = len(unet.down_blocks) - 1 + 1 + len(unet.up_blocks) - 1
    full = [0, 3, 5]
    assert [step for step in range(6) if deep_calls[step]] == full
    assert all(deep_calls[step] == n_deep for step in full)
    assert (cache.full_steps, cache.cached_steps) == (3, 3)
    for step in (1, 2, 4):
        out = outputs[step]
        assert out.shape == (2, FRAMES, unet.config.out_channels, 8, 8)
        assert torch.isfinite(out).all()
        assert not torch.equal(out, outputs[step - 1])  # computed, not replayed
        assert not torch.equal(out, plain(unet, make_inputs(unet, 10 + step)))  # stale deep part
    for step in full:  # full steps are exactly the plain UNet
        assert torch.equal(outputs[step], plain(unet, make_inputs(unet, 10 + step)))


@torch.no_grad()
def test_cached_step_on_unchanged_inputs_equals_full_step(unet):
    cache = StepCache(unet, interval=4)
    inputs = make_inputs(unet, 20)
    full = cache(*inputs, step=0, total_steps=10)
    cached = cache(*inputs, step=1, total_steps=10)
    assert (cache.full_steps, cache.cached_steps) == (1, 1)
    assert torch.equal(cached, full)


@torch.no_grad()
def test_reset_and_new_batch_shape_force_a_full_step(unet):
    cache = StepCache(unet, interval=5)
    cache(*make_inputs(unet, 30), step=0, total_steps=10)
    cache(*make_inputs(unet, 31), step=1, total_steps=10)
    assert (cache.full_steps, cache.cached_steps) == (1, 1)

    cache.reset()
    assert (cache.full_steps, cache.cached_steps) == (0, 0)
    inputs = make_inputs(unet, 32)
    assert torch.equal(cache(*inputs, step=2, total_steps=10), plain(unet, inputs))
    assert (cache.full_steps, cache.cached_steps) == (1, 0)

    # Batch 1 (no guidance) after batch 2: the cached features do not fit, so a full step.
    single = make_inputs(unet, 33, batch=1)
    assert torch.equal(cache(*single, step=3, total_steps=10), plain(unet, single))
    assert (cache.full_steps, cache.cached_steps) == (2, 0)
    out = cache(*make_inputs(unet, 34, batch=1), step=4, total_steps=10)
    assert out.shape[0] == 1
    assert (cache.full_steps, cache.cached_steps) == (2, 1)


@torch.no_grad()
def test_runs_accelerate_hook_around_each_step(unet):
    from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module

    class Counting(ModelHook):
        pre = post = 0

        def pre_forward(self, module, *args, **kwargs):
            Counting.pre += 1
            return args, kwargs

        def post_forward(self, module, output):
            Counting.post += 1
            return output

    inputs = [make_inputs(unet, 40 + step) for step in range(3)]
    expected = StepCache(unet, interval=2)
    expected = [expected(*x, step=i, total_steps=3) for i, x in enumerate(inputs)]

    add_hook_to_module(unet, Counting())
    try:
        cache = StepCache(unet, interval=2)
        got = [cache(*x, step=i, total_steps=3) for i, x in enumerate(inputs)]
    finally:
        remove_hook_from_module(unet)
    assert (Counting.pre, Counting.post) == (3, 3)
    assert (cache.full_steps, cache.cached_steps) == (2, 1)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


@torch.no_grad()
def test_works_with_accelerate_cpu_offload_hook(unet):
    from accelerate import cpu_offload_with_hook
    from accelerate.hooks import remove_hook_from_module

    inputs = make_inputs(unet, 50)
    expected = plain(unet, inputs)
    _, hook = cpu_offload_with_hook(unet, execution_device="cpu")
    try:
        cache = StepCache(unet, interval=3)
        assert torch.equal(cache(*inputs, step=0, total_steps=3), expected)
        assert torch.equal(cache(*inputs, step=1, total_steps=3), expected)
    finally:
        remove_hook_from_module(unet)


@torch.no_grad()
def test_takes_blocks_from_a_compiled_wrapper(unet):
    compiled = torch.compile(unet)  # never called: StepCache uses the wrapped module's blocks
    cache = StepCache(compiled, interval=2)
    inputs = make_inputs(unet, 60)
    assert torch.equal(cache(*inputs, step=0, total_steps=4), plain(unet, inputs))
    assert torch.equal(cache(*inputs, step=1, total_steps=4), plain(unet, inputs))
    assert (cache.full_steps, cache.cached_steps) == (1, 1)


def test_interval_must_be_positive(unet):
    with pytest.raises(ValueError):
        StepCache(unet, interval=0)
