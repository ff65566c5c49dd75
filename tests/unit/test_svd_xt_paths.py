"""Every path the GPU takes, on SVD-XT's block structure, on the CPU: the narrow random-weight
SVD-XT (inference/random_arch.py) through the full, balanced and low profiles, a batch, the
step cache (with the guidance halves batched and one after the other), compiling and FP8,
against diffusers' own pipeline call; and the few-step preset's path (consistency sampler)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from inference.base import GenerationRequest
from inference.consistency import ConsistencyScheduler
from inference.loader import GUIDANCE_SLOPES
from inference.presets import PRESETS
from inference.random_arch import build_random_pipeline
from inference.speed import SpeedOptions, apply_fp8, fp8_eligible
from inference.svd import DECODE_CHUNKS, SvdGenerator

pytestmark = pytest.mark.slow
# 4 steps: with a step cache of interval 3, steps 1 and 2 are cached, 0 and 3 full.
W, H, FRAMES, STEPS = 64, 64, 3, 4


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(2)
    return build_random_pipeline("svd-xt-narrow", "cpu", torch.float32)


def request(seed: int = 1, cfg_scale: float = 2.5) -> GenerationRequest:
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8))
    return GenerationRequest(image=image, seed=seed, cfg_scale=cfg_scale, motion_bucket_id=90)


def diffusers_video(pipe, req: GenerationRequest, decode_chunk: int = 8) -> np.ndarray:
    out = pipe(req.image, height=H, width=W, num_frames=FRAMES, num_inference_steps=STEPS,
               min_guidance_scale=1.0, max_guidance_scale=req.cfg_scale, fps=7,
               motion_bucket_id=req.motion_bucket_id, noise_aug_strength=req.noise_aug_strength,
               decode_chunk_size=decode_chunk,
               generator=torch.Generator("cpu").manual_seed(req.seed), output_type="np")
    return (np.clip(out.frames[0], 0, 1) * 255 + 0.5).astype(np.uint8)


def generator(pipe, profile: str = "full", **speed) -> SvdGenerator:
    return SvdGenerator(pipe, "cpu", "svd-xt-narrow", FRAMES, STEPS, profile=profile,
                        speed=SpeedOptions(**speed))


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.fixture(scope="module")
def reference(pipe):
    return diffusers_video(pipe, request())


def test_the_narrow_model_has_svd_xt_blocks_heads_and_fp8_eligible_layers(pipe):
    full = build_random_pipeline("svd-xt", "meta").unet.config
    narrow = pipe.unet.config
    for key in ("down_block_types", "up_block_types", "layers_per_block", "num_attention_heads",
                "transformer_layers_per_block", "cross_attention_dim", "addition_time_embed_dim",
                "projection_class_embeddings_input_dim", "num_frames", "in_channels"):
        assert narrow[key] == full[key], key
    assert narrow["block_out_channels"] != full["block_out_channels"]
    assert sum(fp8_eligible(m) for m in pipe.unet.modules()) >= 20


def test_random_weights_are_created_in_the_asked_dtype_from_a_seed(monkeypatch):
    """No float32 copy on the way to fp16 (SVD-XT must fit an 8 GiB card), the same weights
    every time."""
    from diffusers import StableVideoDiffusionPipeline
    monkeypatch.setattr(StableVideoDiffusionPipeline, "to", lambda self, *a, **k: self)  # no cast
    a = build_random_pipeline("svd-xt-narrow", "cpu", torch.float16)
    b = build_random_pipeline("svd-xt-narrow", "cpu", torch.float16)
    for component in ("unet", "vae", "image_encoder"):
        params = list(getattr(a, component).parameters())
        assert {p.dtype for p in params} == {torch.float16}, component
        assert all(torch.equal(x, y) for x, y in zip(params, getattr(b, component).parameters()))
    full = build_random_pipeline("svd-xt", "meta")          # SVD-XT's size, nothing allocated
    assert {p.dtype for p in full.unet.parameters()} == {torch.float16}
    assert 1.5e9 < sum(p.numel() for p in full.unet.parameters()) < 1.55e9


def test_full_profile_is_exactly_diffusers(pipe, reference):
    assert max_diff(generator(pipe).generate(request()), reference) == 0


def test_leaner_profiles_match_diffusers_decoding_as_they_do(pipe, reference):
    """Feed-forward slices and (low) the guidance halves in turn change nothing but rounding;
    compared with diffusers decoding as many frames at a time as the profile does."""
    assert DECODE_CHUNKS["balanced"] >= FRAMES                  # decodes as the reference
    assert max_diff(generator(pipe, "balanced").generate(request()), reference) <= 1
    low = generator(pipe, "low").generate(request())
    assert max_diff(low, diffusers_video(pipe, request(), DECODE_CHUNKS["low"])) <= 1


def test_a_batch_of_two_gives_each_video_as_alone(pipe, reference):
    first, second = generator(pipe).generate_batch([request(1), request(2)])
    assert max_diff(first, reference) <= 1
    assert max_diff(second, first) > 16                          # its own seed and image


def test_step_cache_with_guidance_halves_in_turn_equals_batched_halves(pipe, reference):
    """The low profile runs the guidance halves one after the other; with a step cache, each
    half must reuse its own deep features (not the other half's) on cached steps."""
    batched = generator(pipe, "balanced", step_cache=3)
    in_turn = generator(pipe, "low", step_cache=3)
    batched.decode_chunk_size = in_turn.decode_chunk_size
    a = batched.generate(request())
    b = in_turn.generate(request())
    assert max_diff(a, b) <= 1
    for cache in (batched.step_cache, in_turn.step_cache):
        assert (cache.full_steps, cache.cached_steps) == (2, 2)   # steps 1 and 2 cached
    assert max_diff(a, reference) > 1                             # and they changed the video


def test_compiled_blocks_give_the_eager_video(pipe, reference):
    """Dynamo captures every block as it does for inductor on the GPU (the eager backend then
    runs the captured graphs as they are, generating no code)."""
    gen = generator(pipe, compile="on", compile_backend="eager")
    try:
        assert max_diff(gen.generate(request()), reference) <= 1
    finally:
        for block in [*pipe.unet.down_blocks, pipe.unet.mid_block, *pipe.unet.up_blocks]:
            block._compiled_call_impl = None      # later tests run the eager blocks
        torch._dynamo.reset()


def test_fp8_quantizes_the_fp16_unet(monkeypatch):
    """torchao's per-row recipe refuses fp16 weights; ours must quantize SVD-XT's fp16 UNet.
    Only the check for an Ada/Hopper card is bypassed here: the quantize step itself runs."""
    from torchao.quantization import quant_api
    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)
    unet = build_random_pipeline("svd-xt-narrow", "cpu", torch.float16).unet
    eligible = [name for name, m in unet.named_modules() if fp8_eligible(m)]
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(1, 2, 8, 8, 8, generator=g).half(), torch.tensor(0.5),
              torch.randn(1, 1, 1024, generator=g).half(), torch.tensor([[6.0, 90.0, 0.02]]).half())
    before = unet(*inputs).sample
    assert apply_fp8(unet) == len(eligible) > 0
    modules = dict(unet.named_modules())
    assert all(modules[name].weight.dtype == torch.float16 for name in eligible)   # as seen
    assert all(type(modules[name].weight).__name__ == "Float8Tensor" for name in eligible)
    after = unet(*inputs).sample
    assert after.dtype == torch.float16 and torch.isfinite(after).all()
    assert (after - before).norm() / before.norm() < 0.1


def few_step(pipe, profile: str = "full", **speed) -> SvdGenerator:
    """The animatelcm-svd-xt preset's generator over the narrow SVD-XT (random weights: the
    path, not the quality, is what is checked here)."""
    return SvdGenerator(pipe, "cpu", "svd-xt-narrow few-step", FRAMES, 4, profile=profile,
                        speed=SpeedOptions(**speed), scheduler=ConsistencyScheduler(),
                        guidance_slope=GUIDANCE_SLOPES["animatelcm"],
                        max_decode_chunk=PRESETS["animatelcm-svd-xt"].decode_chunk)


def test_the_few_step_path_runs_four_unet_calls_and_composes(pipe, reference):
    calls = []
    hook = pipe.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        gen, steps = few_step(pipe), []
        first = gen.generate(request(cfg_scale=1.8), lambda done, total: steps.append((done, total)))
        assert calls == [2] * 4                     # 4 steps, both guidance halves in one call
        assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)] and gen.decode_chunk_size == 4
        one, two = gen.generate_batch([request(1, 1.8), request(2, 1.8)])
        assert max_diff(one, first) <= 1 and max_diff(two, one) > 16
        assert max_diff(first, reference) > 16      # not the Euler path's video
        calls.clear()
        few_step(pipe, "low").generate(request(cfg_scale=1.8))
        assert calls == [1] * 8                     # the halves one after the other
    finally:
        hook.remove()
        few_step(pipe, "full")                      # the shared pipeline back to full speed


def test_svd_unet_loads_a_single_file_of_svd_xt_architecture_and_refuses_a_misfit(pipe, tmp_path):
    """SVD_UNET's loader on SVD-XT's block structure: a single .safetensors (fp16, as
    AnimateLCM ships) loads into another random UNet of the same architecture; a file with one
    tensor renamed or cut, or of another architecture, is refused and nothing is loaded."""
    from safetensors.torch import save_file

    from inference.unet_file import UNetFileError, load_unet_weights
    state = {k: v.half().contiguous() for k, v in pipe.unet.state_dict().items()}
    save_file(state, str(tmp_path / "unet.safetensors"))
    other = build_random_pipeline("svd-xt-narrow", "cpu", torch.float32, seed=7).unet
    probe = "down_blocks.0.attentions.0.proj_in.weight"
    assert not torch.equal(other.state_dict()[probe], pipe.unet.state_dict()[probe])
    assert load_unet_weights(other, tmp_path / "unet.safetensors") == len(state)
    assert all(torch.equal(v, state[k].float()) for k, v in other.state_dict().items())

    before = other.state_dict()[probe].clone()
    state["conv_out.weights"] = state.pop("conv_out.weight")
    state[probe] = state[probe][:, :-1].contiguous()
    save_file(state, str(tmp_path / "misfit.safetensors"))
    with pytest.raises(UNetFileError) as err:
        load_unet_weights(other, tmp_path / "misfit.safetensors")
    assert "conv_out.weight" in str(err.value) and probe in str(err.value)
    assert torch.equal(other.state_dict()[probe], before)
