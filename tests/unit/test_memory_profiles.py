"""Memory profiles on a GPU: what `auto` picks per card, and the out-of-memory ladder, which
only ever descends. The tiny pipeline runs on the CPU with the generator told it is on CUDA;
the pipeline's device moves (model offload, `.to`) are recorded instead of done."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from inference import svd
from inference.base import GenerationRequest
from inference.svd import SvdGenerator, auto_profile, resident_bytes
from inference.tiny import build_tiny_pipeline

GiB = 2**30
SVD_XT_WEIGHTS = 4.2 * GiB          # SVD-XT's UNet, VAE and image encoder in fp16
CUDA_CONTEXT = 0.5 * GiB


@pytest.mark.parametrize("card_gib, expected", [(8, "low"), (12, "low"), (16, "balanced"),
                                                (24, "full"), (80, "full")])
def test_auto_counts_the_models_own_weights_as_free(card_gib, expected):
    """Read after loading, the card's free memory lacks the weights that every profile's
    threshold already includes; a 16 GiB card used to land in `low`."""
    free_after_loading = card_gib * GiB - CUDA_CONTEXT - SVD_XT_WEIGHTS
    assert auto_profile(int(free_after_loading), int(SVD_XT_WEIGHTS)) == expected
    # Offloaded (the weights on the CPU), the same card has the same choice.
    assert auto_profile(int(card_gib * GiB - CUDA_CONTEXT), 0) == expected


def test_resident_bytes_counts_the_weights_on_that_device():
    pipe = build_tiny_pipeline()
    total = sum(t.numel() * t.element_size() for c in (pipe.unet, pipe.vae, pipe.image_encoder)
                for t in [*c.parameters(), *c.buffers()])
    assert resident_bytes(pipe, "cpu") == total > 0
    assert resident_bytes(pipe, "cuda") == 0


class Moves:
    """Stands in for the pipeline's device moves and records them."""

    def __init__(self, pipe, monkeypatch, oom_on_to: bool = False):
        self.log: list[str] = []
        self.oom_on_to = oom_on_to
        monkeypatch.setattr(pipe, "enable_model_cpu_offload",
                            lambda device=None: self.log.append("offload"))
        monkeypatch.setattr(pipe, "remove_all_hooks", lambda: self.log.append("remove hooks"))
        monkeypatch.setattr(pipe, "to", self._to)

    def _to(self, device, *args, **kwargs):
        self.log.append(f"to {device}")
        if self.oom_on_to:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_pipeline()


def gpu_generator(pipe, monkeypatch, profile: str, **moves) -> tuple[SvdGenerator, Moves]:
    gen = SvdGenerator(pipe, "cuda", "tiny on 'cuda'", default_frames=2, default_steps=1)
    recorder = Moves(pipe, monkeypatch, **moves)
    gen.set_profile(profile)
    seen = []
    sample = gen._sample
    monkeypatch.setattr(gen, "_sample", lambda *a, **k: seen.append(gen.profile) or sample(*a, **k))
    gen.profiles_seen = seen
    return gen, recorder


def request() -> GenerationRequest:
    return GenerationRequest(image=Image.new("RGB", (64, 64), (90, 120, 200)), seed=3)


@pytest.mark.parametrize("level", [1, 2])
def test_from_low_a_retry_stays_low_and_loads_nothing(tiny, monkeypatch, level):
    gen, moves = gpu_generator(tiny, monkeypatch, "low")
    moves.log.clear()
    gen.generate(request(), low_memory=level)
    assert gen.profiles_seen == ["low"] and gen.profile == "low"
    assert moves.log == []                       # no hook removed, nothing moved to the GPU


@pytest.mark.parametrize("start, level, during", [("full", 1, "balanced"), ("full", 2, "low"),
                                                  ("balanced", 1, "balanced"),
                                                  ("balanced", 2, "low")])
def test_the_ladder_descends_for_one_call_then_returns(tiny, monkeypatch, start, level, during):
    gen, moves = gpu_generator(tiny, monkeypatch, start)
    moves.log.clear()
    gen.generate(request(), low_memory=level)
    assert gen.profiles_seen == [during] and gen.profile == start
    if during == "low":                          # offload on the way down, whole again after
        assert moves.log == ["offload", "remove hooks", "to cuda"]
    else:
        assert moves.log == []


def test_a_failed_switch_leaves_a_usable_generator(tiny, monkeypatch):
    """Leaving `low` moves the whole pipeline onto the card; when that runs out of memory the
    pipeline is offloaded again (hooks back) instead of left half moved without hooks."""
    gen, moves = gpu_generator(tiny, monkeypatch, "low", oom_on_to=True)
    moves.log.clear()
    with pytest.raises(torch.OutOfMemoryError):
        gen.set_profile("full")
    assert moves.log == ["remove hooks", "to cuda", "offload"]
    assert gen.profile == "low" and gen.decode_chunk_size == svd.DECODE_CHUNKS["low"]
    assert gen.generate(request()).shape == (2, 64, 64, 3)


def test_a_retry_that_cannot_return_to_its_profile_still_delivers(tiny, monkeypatch):
    gen, moves = gpu_generator(tiny, monkeypatch, "full", oom_on_to=True)
    frames = gen.generate(request(), low_memory=2)
    assert isinstance(frames, np.ndarray) and gen.profiles_seen == ["low"]
    assert gen.profile == "low"                  # usable, and the next call runs in it
    gen.generate(request())
    assert gen.profiles_seen == ["low", "low"]


def test_auto_on_a_gpu_reads_free_memory_plus_its_own_weights(tiny, monkeypatch):
    gen, _ = gpu_generator(tiny, monkeypatch, "low")
    monkeypatch.setattr(torch.cuda, "mem_get_info",
                        lambda device=None: (int(11.3 * GiB), 16 * GiB))
    monkeypatch.setattr(svd, "resident_bytes", lambda pipe: int(SVD_XT_WEIGHTS))
    gen.set_profile("auto")
    assert gen.profile == "balanced"
