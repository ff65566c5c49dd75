"""A fast fake VideoGenerator for API tests (the real pipeline has its own end-to-end tests)."""
from __future__ import annotations

import threading
import time

import numpy as np

from inference.base import VideoGenerator


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, which is what the worker recognises."""


class FakeGenerator(VideoGenerator):
    description = "fake generator (tests)"
    default_frames = 4
    default_steps = 3
    can_batch = True

    def __init__(self, step_delay: float = 0.0, fail_on_motion: int | None = None,
                 oom_below_level: int = 0, decode_delay: float = 0.0,
                 oom_batch_over: int | None = None):
        self.step_delay = step_delay
        self.fail_on_motion = fail_on_motion
        self.oom_below_level = oom_below_level     # raise OutOfMemoryError below this level
        self.decode_delay = decode_delay           # after the last step, as the VAE decode
        self.oom_batch_over = oom_batch_over       # batches larger than this run out of memory
        self.levels = []
        self.calls = []                            # requests of `generate`
        self.batches = []                          # request lists of `generate_batch`
        self.started = []                          # (time.time(), seeds) of every call
        self.release = threading.Event()   # with hold=True, steps wait for this
        self.hold = False

    def generate(self, request, on_step=None, low_memory=0):
        self.calls.append(request)
        return self._run([request], on_step, low_memory)[0]

    def generate_batch(self, requests, on_step=None, low_memory=0):
        self.batches.append(list(requests))
        if self.oom_batch_over is not None and len(requests) > self.oom_batch_over:
            self.levels.append(low_memory)
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB (fake batch)")
        return self._run(requests, on_step, low_memory)

    def _run(self, requests, on_step, low_memory):
        self.started.append((time.time(), [r.seed for r in requests]))
        self.levels.append(low_memory)
        if low_memory < self.oom_below_level:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        if any(r.motion_bucket_id == self.fail_on_motion for r in requests):
            raise RuntimeError("the model blew up (fake)")
        steps = requests[0].steps or self.default_steps
        for i in range(steps):
            if self.hold:
                self.release.wait(30)
            time.sleep(self.step_delay)
            if on_step:
                on_step(i + 1, steps)
        time.sleep(self.decode_delay)
        return [self.frames(r) for r in requests]

    def frames(self, request):
        """What a request turns into: noise from its seed, shifted a little per frame."""
        w, h = request.image.size
        n = request.num_frames or self.default_frames
        rng = np.random.default_rng(request.seed)
        base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        return np.stack([np.roll(base, i, axis=1) for i in range(n)])   # a little motion
