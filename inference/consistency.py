"""The stochastic iterative consistency sampler AnimateLCM-SVD-xt runs with (arXiv 2402.00769,
weights wangfuyun/AnimateLCM-SVD-xt), for SVD's EDM-parameterised v-prediction UNet. Our own
implementation of the algorithm, driven like a diffusers scheduler (set_timesteps,
scale_model_input, step) so that inference/sampler.py needs no special case.

Parameters, the authors' values by default: num_train_timesteps (40) Karras sigmas between
sigma_max (700) and sigma_min (0.002) with exponent rho (7); n inference steps take every
(40 // n)-th of them from sigma_max down, then 0. sigma_data (1.0) sets the EDM scalings,
s_noise (1.0) the noise re-injected after each step. The denoised sample is not clipped.

diffusers' CMStochasticIterativeScheduler is the pixel-space consistency models' sampler
(other c_out, timestep scale, last sigma, clipping), not this one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor

Generators = torch.Generator | list[torch.Generator] | None


@dataclass(frozen=True)
class StepOutput:
    prev_sample: torch.Tensor


class ConsistencyScheduler:
    order = 1   # diffusers' pipelines read it to count warm-up steps

    def __init__(self, num_train_timesteps: int = 40, sigma_min: float = 0.002,
                 sigma_max: float = 700.0, sigma_data: float = 1.0, rho: float = 7.0,
                 s_noise: float = 1.0):
        self.num_train_timesteps = num_train_timesteps
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.sigma_data, self.rho, self.s_noise = sigma_data, rho, s_noise
        # Latents of unit variance plus noise of std sigma_max have std sqrt(sigma_max^2 + 1).
        self.init_noise_sigma = math.sqrt(sigma_max ** 2 + 1.0)
        self.sigmas = torch.empty(0, dtype=torch.float64)
        self.timesteps = torch.empty(0, dtype=torch.float32)
        self._step_index: int | None = None

    def karras_sigma(self, ramp: torch.Tensor) -> torch.Tensor:
        """sigma_max at ramp 0, sigma_min at ramp 1."""
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return (hi + ramp * (lo - hi)) ** self.rho

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        n, train = num_inference_steps, self.num_train_timesteps
        if not 1 <= n <= train:
            raise ValueError(f"num_inference_steps must be in 1..{train}, not {n}")
        ramp = torch.arange(n, dtype=torch.float64) * (train // n) / (train - 1)
        sigmas = self.karras_sigma(ramp)
        # float64 on the CPU: a step reads its scalars from here without waiting on the GPU.
        self.sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
        self.timesteps = (0.25 * sigmas.log()).to(device, torch.float32)   # SVD's c_noise
        self._step_index = None

    def index_for_timestep(self, timestep: float | torch.Tensor) -> int:
        """Which of self.timesteps `timestep` is (they are distinct)."""
        t = float(timestep)
        gaps = (self.timesteps.cpu().double() - t).abs()
        if not len(gaps) or float(gaps.min()) > 1e-4:
            raise ValueError(f"timestep {t} is not in the schedule; call set_timesteps first")
        return int(gaps.argmin())

    def _index(self, timestep: float | torch.Tensor) -> int:
        # As diffusers' schedulers do: the timestep's value is read once (a GPU sync when it
        # lives there), then a counter that step advances and set_timesteps resets.
        if self._step_index is None:
            self._step_index = self.index_for_timestep(timestep)
        if self._step_index >= len(self.timesteps):
            raise ValueError("every step of the schedule is done; call set_timesteps first")
        return self._step_index

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        sigma = float(self.sigmas[self._index(timestep)])
        return sample / math.sqrt(sigma ** 2 + self.sigma_data ** 2)

    def scalings(self, sigma: float) -> tuple[float, float]:
        """(c_skip, c_out) of the EDM v-prediction parameterisation: x0 = c_out * v + c_skip * x."""
        sd = self.sigma_data
        return sd ** 2 / (sigma ** 2 + sd ** 2), -sigma * sd / math.sqrt(sigma ** 2 + sd ** 2)

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor,
             sample: torch.Tensor, generator: Generators = None) -> StepOutput:
        """Denoise to x0, then re-noise to the next sigma. A list of generators gives each batch
        element (dim 0) its noise from its own generator."""
        i = self._index(timestep)
        self._step_index = i + 1
        sigma, sigma_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        c_skip, c_out = self.scalings(sigma)
        denoised = c_out * model_output + c_skip * sample
        if len(self.timesteps) == 1:
            return StepOutput(denoised)   # one step: no noise drawn at all
        # Drawn at every step, the last included, so that the random stream matches the
        # authors' sampler whatever the number of steps.
        noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                             dtype=model_output.dtype)
        if sigma_next == 0.0:
            return StepOutput(denoised)
        scale = min(max(sigma_next, 0.0), self.sigma_max)
        return StepOutput(denoised + (self.s_noise * noise) * scale)
