"""Our sampling loop against diffusers' own pipeline call, batching, and the speed options
that run on a CPU (the tiny random-weight pipeline)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from inference.base import GenerationRequest
from inference.sampler import SampleOptions, sample
from inference.speed import ChunkedFeedForward, resolve, set_feed_forward_chunking
from inference.svd import SvdGenerator
from inference.tiny import build_tiny_pipeline

W, H, FRAMES, STEPS = 128, 64, 5, 3


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(2)
    return build_tiny_pipeline()


def image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8))


def diffusers_video(pipe, request: GenerationRequest) -> np.ndarray:
    """What StableVideoDiffusionPipeline.__call__ makes of the request, as uint8."""
    out = pipe(request.image, height=H, width=W, num_frames=FRAMES, num_inference_steps=STEPS,
               min_guidance_scale=min(1.0, request.cfg_scale), max_guidance_scale=request.cfg_scale,
               fps=7, motion_bucket_id=request.motion_bucket_id,
               noise_aug_strength=request.noise_aug_strength, decode_chunk_size=8,
               generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np")
    return (np.clip(out.frames[0], 0, 1) * 255 + 0.5).astype(np.uint8)


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


OPTIONS = SampleOptions(frames=FRAMES, steps=STEPS)


@pytest.mark.parametrize("cfg_scale", [2.5, 1.0])
def test_one_video_is_exactly_what_diffusers_makes(pipe, cfg_scale):
    request = GenerationRequest(image=image(0), seed=7, cfg_scale=cfg_scale, motion_bucket_id=90)
    ours = sample(pipe, [request], OPTIONS)[0]
    assert ours.shape == (FRAMES, H, W, 3) and ours.dtype == np.uint8
    assert max_diff(ours, diffusers_video(pipe, request)) == 0


def test_a_batch_keeps_each_videos_seed_guidance_and_motion(pipe):
    requests = [GenerationRequest(image=image(0), seed=7, cfg_scale=2.5, motion_bucket_id=90),
                GenerationRequest(image=image(1), seed=9, cfg_scale=1.8, motion_bucket_id=200,
                                  noise_aug_strength=0.1)]
    batch = sample(pipe, requests, OPTIONS)
    alone = [diffusers_video(pipe, r) for r in requests]
    # Batched arithmetic may round differently in the last bit; nothing more.
    assert max_diff(batch[0], alone[0]) <= 1 and max_diff(batch[1], alone[1]) <= 1
    assert max_diff(batch[0], batch[1]) > 20


def test_guidance_halves_one_after_the_other_give_the_same_video(pipe):
    request = GenerationRequest(image=image(2), seed=3, cfg_scale=3.0)
    together = sample(pipe, [request], OPTIONS)[0]
    apart = sample(pipe, [request], SampleOptions(frames=FRAMES, steps=STEPS, cfg_sequential=True))[0]
    assert max_diff(together, apart) <= 1


def test_steps_are_reported_and_a_raising_callback_stops_the_run(pipe):
    request = GenerationRequest(image=image(0), seed=1)
    seen = []
    sample(pipe, [request], OPTIONS, on_step=lambda done, total: seen.append((done, total)))
    assert seen == [(1, STEPS), (2, STEPS), (3, STEPS)]

    class Stop(Exception):
        pass

    def stop_at_two(done, total):
        if done == 2:
            raise Stop
    with pytest.raises(Stop):
        sample(pipe, [request], OPTIONS, on_step=stop_at_two)


def test_a_batch_must_share_size_and_guidance(pipe):
    small = Image.new("RGB", (64, 64))
    with pytest.raises(ValueError):
        sample(pipe, [GenerationRequest(image=image(0), seed=1),
                      GenerationRequest(image=small, seed=2)], OPTIONS)
    gen = SvdGenerator(pipe, "cpu", "tiny", FRAMES, STEPS)
    with pytest.raises(ValueError):
        gen.generate_batch([GenerationRequest(image=image(0), seed=1, cfg_scale=2.0),
                            GenerationRequest(image=image(1), seed=2, cfg_scale=1.0)])
    assert gen.batch_key(GenerationRequest(image=image(0), seed=1)) == \
        gen.batch_key(GenerationRequest(image=image(1), seed=5, motion_bucket_id=3))


def test_warm_up_runs_every_unet_shape_without_decoding(pipe, monkeypatch):
    gen = SvdGenerator(pipe, "cpu", "tiny", FRAMES, STEPS)
    decoded, batches = [], []
    monkeypatch.setattr(pipe, "decode_latents", lambda *a, **k: decoded.append(1))
    hook = pipe.unet.register_forward_pre_hook(
        lambda module, args: batches.append((tuple(args[0].shape[-2:]), args[0].shape[0])))
    try:
        gen.warm_up([(W, H), (64, 128)], max_batch=3)
    finally:
        hook.remove()
    assert decoded == []
    seen = set(batches)
    for latent in ((H // 32, W // 32), (128 // 32, 64 // 32)):
        # guidance on (2 halves), off (1; also the low profile's halves), batches of 2 and 3
        assert {(latent, n) for n in (2, 1, 4, 6)} == {s for s in seen if s[0] == latent}


def test_sliced_feed_forward_changes_memory_not_results(pipe):
    request = GenerationRequest(image=image(3), seed=11, cfg_scale=2.0)
    plain = sample(pipe, [request], OPTIONS)[0]
    set_feed_forward_chunking(pipe.unet, True)
    try:
        wrapped = [m for m in pipe.unet.modules() if isinstance(m, ChunkedFeedForward)]
        assert len(wrapped) >= 4         # spatial and temporal blocks, ff and ff_in
        sliced = sample(pipe, [request], OPTIONS)[0]
    finally:
        set_feed_forward_chunking(pipe.unet, False)
    assert not any(isinstance(m, ChunkedFeedForward) for m in pipe.unet.modules())
    assert max_diff(plain, sliced) <= 1


def test_profiles_switch_and_switch_back(pipe):
    gen = SvdGenerator(pipe, "cpu", "tiny", FRAMES, STEPS, profile="low")
    assert gen.decode_chunk_size == 2
    assert any(isinstance(m, ChunkedFeedForward) for m in pipe.unet.modules())
    gen.set_profile("full")
    assert gen.decode_chunk_size == 8
    assert not any(isinstance(m, ChunkedFeedForward) for m in pipe.unet.modules())


def test_speed_settings_resolve_per_mode_and_device():
    quality = resolve("quality")
    assert (quality.compile, quality.step_cache, quality.fp8) == ("off", 1, False)
    fast = resolve("fast", device="cpu")
    assert fast.step_cache == 3 and fast.fp8 is False      # no FP8 without a GPU, no error
    assert resolve("fast", step_cache=1).step_cache == 1   # an explicit setting wins
    assert resolve("quality", compile="max").compile == "max"
    with pytest.raises(ValueError, match="FP8 needs an NVIDIA GPU"):
        resolve("quality", fp8="on", device="cpu")


def test_fast_mode_caches_steps_yet_reports_and_stops_at_every_step(pipe):
    request = GenerationRequest(image=image(4), seed=5, cfg_scale=2.0)
    quality = SvdGenerator(pipe, "cpu", "tiny", FRAMES, 6).generate(request)
    fast = SvdGenerator(pipe, "cpu", "tiny", FRAMES, 6, speed=resolve("fast"))
    seen = []
    frames = fast.generate(request, on_step=lambda done, total: seen.append(done))
    assert seen == [1, 2, 3, 4, 5, 6]
    # Steps 0, 3 and 5 (the last) run the whole UNet; 1, 2 and 4 only its shallow blocks.
    assert (fast.step_cache.full_steps, fast.step_cache.cached_steps) == (3, 3)
    assert frames.shape == quality.shape and 0 < max_diff(frames, quality)

    class Cancelled(Exception):
        pass

    def cancel_at_two(done, total):
        if done == 2:
            raise Cancelled
    with pytest.raises(Cancelled):
        fast.generate(request, on_step=cancel_at_two)
    # The next video starts from a clean cache: the same request gives the same frames.
    assert max_diff(fast.generate(request), frames) == 0
