"""What `scripts/bench.py gpu` measures about one run, apart from the runs themselves.

- `Meter.run`: one function owns a row's numbers: it applies the row's memory limit, resets
  the peak-memory counter and the phase timings, times the call, samples the GPU's busy
  share while it runs and reads the peak right after it, so a row's peak is its own (never a
  warm-up's, never the row before it). `Meter.time_phases` times a pipeline's methods
  (image encode, decode) within it.
- `GpuBusy`: NVML's utilisation of the GPU this process uses (`nvml_handle` follows
  CUDA_VISIBLE_DEVICES: NVML numbers GPUs physically, CUDA only the visible ones).
- `psnr` and `compare`: frames against a reference's frames.

Nothing here imports torch at import time; `Meter` takes the torch module (or a fake).
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import numpy as np


def nvml_handle(nvml, environ=None):
    """NVML's handle of CUDA's device 0, the first entry of CUDA_VISIBLE_DEVICES: an index
    (physical, as NVML counts), a GPU-/MIG- UUID (or a unique prefix of one, as CUDA accepts);
    unset or empty: index 0."""
    environ = os.environ if environ is None else environ
    first = environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if not first:
        return nvml.nvmlDeviceGetHandleByIndex(0)
    if first.lstrip("-").isdigit():
        return nvml.nvmlDeviceGetHandleByIndex(int(first))
    if not first.startswith(("GPU-", "MIG-")):
        raise ValueError(f"CUDA_VISIBLE_DEVICES={first!r}: not an index or a UUID")
    try:
        return nvml.nvmlDeviceGetHandleByUUID(first)
    except Exception:                          # noqa: BLE001 - maybe a prefix: look for it
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            if (uuid.decode() if isinstance(uuid, bytes) else uuid).startswith(first):
                return handle
        raise


class GpuBusy:
    """Samples NVML's utilisation while running; None where NVML is not available."""

    def __init__(self, nvml=None, environ=None):
        self.samples: list[int] = []
        self._stop = threading.Event()
        try:
            if nvml is None:
                import pynvml as nvml
            nvml.nvmlInit()
            self._handle = nvml_handle(nvml, environ)
            self._nvml = nvml
        except Exception:                     # noqa: BLE001 - no NVML, no GPU: no number
            self._nvml = None

    @contextmanager
    def measure(self):
        self.samples, self._stop = [], threading.Event()
        thread = None
        if self._nvml:
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
        try:
            yield
        finally:
            self._stop.set()
            if thread:
                thread.join()

    def _run(self):
        while not self._stop.wait(0.05):
            try:
                self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            except Exception:                 # noqa: BLE001 - e.g. a MIG slice: no number
                return

    @property
    def percent(self) -> float | None:
        return round(float(np.mean(self.samples)), 1) if self.samples else None


class Meter:
    """Seconds, peak GPU memory (GiB) and busy share of one call on `device`."""

    def __init__(self, torch, device: str, busy: GpuBusy | None = None):
        self.torch = torch
        self.cuda = device.startswith("cuda")
        self.device = device
        self.busy = busy or GpuBusy()
        self.timings: dict[str, float] = {}     # seconds per phase, of the last run

    def time_phases(self, pipe, names) -> dict[str, float]:
        """Wrap these methods of `pipe` so that each run adds up their seconds in `timings`."""
        for name in names:
            def timed(*a, _original=getattr(pipe, name), _name=name, **kw):
                self.sync()
                t = time.perf_counter()
                out = _original(*a, **kw)
                self.sync()
                self.timings[_name] = self.timings.get(_name, 0.0) + time.perf_counter() - t
                return out
            setattr(pipe, name, timed)
        return self.timings

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def run(self, fn, memory_gib: float | None = None):
        """(fn's result, {"s" (unrounded), "peak_gib", "busy"}), under a limit of `memory_gib`
        GPU memory when given (emulates a smaller card; lifted afterwards, also on an error)."""
        cuda = self.torch.cuda
        self.timings.clear()
        if memory_gib and self.cuda:
            total = cuda.get_device_properties(self.device).total_memory / 2**30
            cuda.set_per_process_memory_fraction(min(memory_gib / total, 1.0), self.device)
        try:
            self.sync()
            if self.cuda:
                cuda.empty_cache()
                cuda.reset_peak_memory_stats(self.device)
            t = time.perf_counter()
            with self.busy.measure():
                out = fn()
                self.sync()
            seconds = time.perf_counter() - t
            peak = round(cuda.max_memory_allocated(self.device) / 2**30, 2) if self.cuda else None
        finally:
            if memory_gib and self.cuda:
                cuda.set_per_process_memory_fraction(1.0, self.device)
        return out, {"s": seconds, "peak_gib": peak, "busy": self.busy.percent}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else round(10 * np.log10(255.0 ** 2 / mse), 2)


def compare(result: dict, frames, reference, key: str) -> None:
    """Adds psnr_vs_KEY and max_abs_diff_vs_KEY to a row (nothing without both frames)."""
    if frames is not None and reference is not None:
        result[f"psnr_vs_{key}"] = psnr(frames, reference)
        result[f"max_abs_diff_vs_{key}"] = int(np.abs(frames.astype(int)
                                                      - reference.astype(int)).max())
