"""A fast fake VideoGenerator for API tests (the real pipeline has its own end-to-end tests)."""
from __future__ import annotations

import threading
import time

import numpy as np


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, which is what the worker recognises."""


class FakeGenerator:
    description = "fake generator (tests)"
    default_frames = 4
    default_steps = 3

    def __init__(self, step_delay: float = 0.0, fail_on_motion: int | None = None,
                 oom_below_level: int = 0):
        self.step_delay = step_delay
        self.fail_on_motion = fail_on_motion
        self.oom_below_level = oom_below_level     # raise OutOfMemoryError below this level
        self.levels = []
        self.calls = []
        self.release = threading.Event()   # with hold=True, steps wait for this
        self.hold = False

    def generate(self, request, on_step=None, low_memory=0):
        self.calls.append(request)
        self.levels.append(low_memory)
        if low_memory < self.oom_below_level:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        if request.motion_bucket_id == self.fail_on_motion:
            raise RuntimeError("the model blew up (fake)")
        steps = request.steps or self.default_steps
        for i in range(steps):
            if self.hold:
                self.release.wait(30)
            time.sleep(self.step_delay)
            if on_step:
                on_step(i + 1, steps)
        w, h = request.image.size
        n = request.num_frames or self.default_frames
        rng = np.random.default_rng(request.seed)
        base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        return np.stack([np.roll(base, i, axis=1) for i in range(n)])   # a little motion
