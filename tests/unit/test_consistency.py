"""inference/consistency.py, the AnimateLCM-SVD consistency sampler: its schedule and step
against the closed-form equations, against diffusers' CMStochasticIterativeScheduler where the
two agree, and per-video seeds in a batch. Small tensors only."""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import CMStochasticIterativeScheduler
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import retrieve_timesteps
from diffusers.utils.torch_utils import randn_tensor

import inference.consistency as consistency
from inference.consistency import ConsistencyScheduler

SIGMA_MIN, SIGMA_MAX, RHO, TRAIN = 0.002, 700.0, 7.0, 40
SHAPE = (1, 3, 4, 2, 2)    # (batch, frames, channels, h, w) as SVD's latents, tiny


def karras(n: int) -> list[float]:
    """The authors' schedule written out: every (40 // n)-th training sigma, then 0."""
    lo, hi = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)
    return [(hi + (i * (TRAIN // n) / (TRAIN - 1)) * (lo - hi)) ** RHO for i in range(n)] + [0.0]


def gen(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def fake_v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A stand-in UNet: any fixed function of the scaled input and the timestep."""
    return torch.tanh(x) * 0.5 + 0.1 * float(t)


def run(scheduler: ConsistencyScheduler, steps: int, seeds: list[int]) -> torch.Tensor:
    """The sampling loop as inference/sampler.py drives a scheduler, one generator per video."""
    gens = [gen(s) for s in seeds]
    timesteps, n = retrieve_timesteps(scheduler, steps, "cpu", None, None)
    assert n == steps
    shape = (len(seeds),) + SHAPE[1:]
    x = randn_tensor(shape, generator=gens if len(gens) > 1 else gens[0], dtype=torch.float32)
    x = x * scheduler.init_noise_sigma
    for t in timesteps:
        v = fake_v(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(v, t, x, generator=gens if len(gens) > 1 else gens[0]).prev_sample
    return x


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8, 40])   # 3: 40 // 3 is not 40 / 3
def test_sigmas_and_timesteps_are_the_karras_schedule(n):
    s = ConsistencyScheduler()
    s.set_timesteps(n)
    expected = torch.tensor(karras(n), dtype=torch.float64)
    assert s.sigmas.dtype == torch.float64 and len(s.sigmas) == n + 1
    torch.testing.assert_close(s.sigmas, expected, rtol=1e-6, atol=0)
    assert s.sigmas[-1] == 0 and math.isclose(float(s.sigmas[0]), SIGMA_MAX, rel_tol=1e-9)
    assert bool((s.sigmas[:-1].diff() < 0).all())
    assert s.timesteps.dtype == torch.float32 and len(s.timesteps) == n
    torch.testing.assert_close(s.timesteps, (0.25 * expected[:-1].log()).float())
    assert s.init_noise_sigma == pytest.approx(math.sqrt(SIGMA_MAX ** 2 + 1), rel=1e-12)


def test_scale_and_step_follow_the_equations():
    s = ConsistencyScheduler(sigma_data=0.5, s_noise=0.8)    # not the defaults: both must be used
    s.set_timesteps(4)
    sigma, sigma_next = karras(4)[1], karras(4)[2]
    t = s.timesteps[1]
    x, v = torch.randn(SHAPE, generator=gen(0)), torch.randn(SHAPE, generator=gen(1))

    scaled = s.scale_model_input(x, t)
    torch.testing.assert_close(scaled, x / math.sqrt(sigma ** 2 + 0.25))

    c_skip = 0.25 / (sigma ** 2 + 0.25)
    c_out = -sigma * 0.5 / math.sqrt(sigma ** 2 + 0.25)
    assert s.scalings(sigma) == pytest.approx((c_skip, c_out), rel=1e-12)
    noise = randn_tensor(SHAPE, generator=gen(5), device=torch.device("cpu"), dtype=torch.float32)
    expected = (c_out * v.double() + c_skip * x.double()) + 0.8 * noise.double() * sigma_next
    got = s.step(v, t, x, generator=gen(5)).prev_sample
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    s.set_timesteps(4)                                   # back to the start: same step, other seed
    other = s.step(v, t, x, generator=gen(6)).prev_sample
    assert not torch.allclose(other.double(), expected, atol=1e-2)


def test_step_keeps_the_samples_dtype():
    s = ConsistencyScheduler()
    s.set_timesteps(2)
    x = torch.randn(SHAPE, dtype=torch.bfloat16)
    t = s.timesteps[0]
    assert s.scale_model_input(x, t).dtype == torch.bfloat16
    assert s.step(x, t, x, generator=gen(0)).prev_sample.dtype == torch.bfloat16


def test_the_last_step_adds_no_noise():
    x, v = torch.randn(SHAPE, generator=gen(0)), torch.randn(SHAPE, generator=gen(1))
    for n in (1, 4):
        outs = []
        for seed in (1, 2):
            s = ConsistencyScheduler()
            s.set_timesteps(n)
            t = s.timesteps[-1]                          # straight to the last step
            g = gen(seed)
            outs.append(s.step(v, t, x, generator=g).prev_sample)
            # Several steps draw noise at the last step too (the authors' random stream);
            # a single step draws none.
            assert torch.equal(g.get_state(), gen(seed).get_state()) == (n == 1)
        sigma = karras(n)[-2]
        c_skip, c_out = 1 / (sigma ** 2 + 1), -sigma / math.sqrt(sigma ** 2 + 1)
        assert torch.equal(outs[0], outs[1])             # the seed no longer matters
        torch.testing.assert_close(outs[0], c_out * v + c_skip * x)


def test_agrees_with_diffusers_cm_scheduler_where_the_algorithms_agree():
    """diffusers' CMStochasticIterativeScheduler shares the Karras schedule, the input scaling
    and the noise draw. It differs elsewhere (float32 sigmas ending on sigma_min, not 0;
    timesteps 1000 * 0.25 ln(sigma); c_out positive and sigma_min-shifted; noise scaled by
    sqrt(sigma_next^2 - sigma_min^2); clipping; init_noise_sigma = sigma_max), so only the
    shared parts are compared."""
    for n in (1, 2, 4, 8):
        ours = ConsistencyScheduler()
        theirs = CMStochasticIterativeScheduler(num_train_timesteps=TRAIN, sigma_min=SIGMA_MIN,
                                                sigma_max=SIGMA_MAX, sigma_data=1.0, rho=RHO,
                                                clip_denoised=False)
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
        torch.testing.assert_close(theirs.sigmas[:-1].double(), ours.sigmas[:-1], rtol=1e-6, atol=0)
        assert float(theirs.sigmas[-1]) == pytest.approx(SIGMA_MIN) and ours.sigmas[-1] == 0
        x = torch.randn(SHAPE, generator=gen(n))
        for i in range(n):
            ours._step_index = theirs._step_index = None     # each finds its step by value
            torch.testing.assert_close(ours.scale_model_input(x, ours.timesteps[i]),
                                       theirs.scale_model_input(x, theirs.timesteps[i]))


def test_draws_the_same_noise_as_diffusers_cm_scheduler(monkeypatch):
    import diffusers.schedulers.scheduling_consistency_models as cm
    drawn = {}

    def recording(name):
        def draw(*args, **kwargs):
            drawn.setdefault(name, []).append(randn_tensor(*args, **kwargs))
            return drawn[name][-1]
        return draw

    monkeypatch.setattr(cm, "randn_tensor", recording("theirs"))
    monkeypatch.setattr(consistency, "randn_tensor", recording("ours"))
    x = torch.randn((2,) + SHAPE[1:], generator=gen(0))
    for generators in (lambda: gen(7), lambda: [gen(7), gen(8)]):
        ours, theirs = ConsistencyScheduler(), CMStochasticIterativeScheduler(sigma_max=SIGMA_MAX)
        ours.set_timesteps(4)
        theirs.set_timesteps(4)
        g_ours, g_theirs = generators(), generators()
        for i in range(4):
            ours.step(x, ours.timesteps[i], x, generator=g_ours)
            theirs.step(x, theirs.timesteps[i], x, generator=g_theirs)
    assert len(drawn["ours"]) == len(drawn["theirs"]) == 8
    for a, b in zip(drawn["ours"], drawn["theirs"]):
        assert torch.equal(a, b)


def test_each_video_keeps_its_own_seed_in_a_batch():
    s = ConsistencyScheduler()
    batch = run(s, 4, [1, 2])
    alone = [run(s, 4, [seed]) for seed in (1, 2)]
    torch.testing.assert_close(batch, torch.cat(alone))
    assert not torch.allclose(alone[0], alone[1])


def test_same_seed_same_result_and_step_counts_are_checked():
    s = ConsistencyScheduler()
    first, second = run(s, 4, [11]), run(s, 4, [11])
    assert torch.equal(first, second)
    assert not torch.equal(first, run(s, 4, [12]))
    assert torch.equal(run(s, 1, [11]), run(ConsistencyScheduler(), 1, [11]))
    for bad in (0, 41):
        with pytest.raises(ValueError):
            s.set_timesteps(bad)
    s.set_timesteps(40)
    assert len(s.timesteps) == 40 and len(set(s.timesteps.tolist())) == 40
    with pytest.raises(ValueError):                      # not a timestep of the schedule
        s.scale_model_input(torch.zeros(1), 3.0)
