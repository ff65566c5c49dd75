"""scripts/bench_gpu_measure.py: NVML follows CUDA_VISIBLE_DEVICES, and Meter gives each run
its own peak memory and lifts a run's memory limit afterwards (fakes for pynvml and torch.cuda)."""
from __future__ import annotations

import sys
import time
from types import ModuleType, SimpleNamespace

import pytest
import torch

from tests.helpers import ROOT

if str(ROOT / "scripts") not in sys.path:       # as scripts/bench.py puts it
    sys.path.insert(0, str(ROOT / "scripts"))

import bench_gpu_measure  # noqa: E402
from bench_gpu_measure import GpuBusy, Meter, nvml_handle  # noqa: E402

UUIDS = ["GPU-0000aaaa-1111", "GPU-3333dddd-4444", "MIG-5555eeee-6666"]


def fake_pynvml(utilisation: dict | None = None) -> ModuleType:
    """pynvml over three physical GPUs: handles ("index", i); UUIDs as in UUIDS."""
    nvml = ModuleType("pynvml")
    nvml.calls = []

    def by_index(i):
        nvml.calls.append(("index", i))
        if not 0 <= i < len(UUIDS):
            raise RuntimeError("NVML_ERROR_INVALID_ARGUMENT")
        return ("index", i)

    def by_uuid(uuid):
        nvml.calls.append(("uuid", uuid))
        if uuid not in UUIDS:
            raise RuntimeError("NVML_ERROR_NOT_FOUND")
        return ("index", UUIDS.index(uuid))

    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetHandleByIndex = by_index
    nvml.nvmlDeviceGetHandleByUUID = by_uuid
    nvml.nvmlDeviceGetCount = lambda: len(UUIDS)
    nvml.nvmlDeviceGetUUID = lambda handle: UUIDS[handle[1]].encode()
    nvml.nvmlDeviceGetUtilizationRates = lambda handle: SimpleNamespace(
        gpu=(utilisation or {}).get(handle[1], 0))
    return nvml


@pytest.mark.parametrize("visible, handle", [
    (None, ("index", 0)),                    # unset: CUDA's device 0 is physical GPU 0
    ("", ("index", 0)),
    ("2", ("index", 2)),
    (" 1 ,0", ("index", 1)),                 # the first entry is CUDA's device 0
    ("GPU-3333dddd-4444,0", ("index", 1)),  # a UUID: looked up by UUID
    ("MIG-5555eeee-6666", ("index", 2)),
    ("GPU-3333", ("index", 1)),             # a unique prefix, as CUDA accepts
])
def test_nvml_handle_is_cudas_device_0(visible, handle):
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert nvml_handle(fake_pynvml(), environ) == handle


def test_nvml_handle_by_uuid_asks_nvml_by_uuid():
    nvml = fake_pynvml()
    nvml_handle(nvml, {"CUDA_VISIBLE_DEVICES": "GPU-3333dddd-4444"})
    assert nvml.calls == [("uuid", "GPU-3333dddd-4444")]


def test_gpu_busy_samples_the_visible_gpu(monkeypatch):
    """CUDA_VISIBLE_DEVICES=2: the busy share is physical GPU 2's, not GPU 0's."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml({0: 5, 2: 90}))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    busy = GpuBusy()
    with busy.measure():
        time.sleep(0.3)
    assert busy.percent == 90


def test_gpu_busy_without_a_usable_device_has_no_number(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml({0: 50}))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")       # no such GPU: no number, no error
    busy = GpuBusy()
    with busy.measure():
        time.sleep(0.1)
    assert busy.percent is None


class FakeCuda:
    """torch.cuda's memory counters: `use(gib)` allocates for a moment (and fails beyond the
    per-process fraction, as the caching allocator does); `peak` is reset by the bench only."""
    total = 16 * 2**30

    def __init__(self):
        self.allocated, self.peak, self.fraction = 0, 0, 1.0
        self.fractions_seen: list[float] = []

    def use(self, gib: float) -> None:
        self.fractions_seen.append(self.fraction)
        need = self.allocated + int(gib * 2**30)
        if need > self.fraction * self.total:
            raise torch.OutOfMemoryError(f"fake: {gib} GiB over the limit")
        self.peak = max(self.peak, need)

    def synchronize(self, device=None):
        pass

    def empty_cache(self):
        pass

    def reset_peak_memory_stats(self, device=None):
        self.peak = self.allocated

    def max_memory_allocated(self, device=None):
        return self.peak

    def get_device_properties(self, device=None):
        return SimpleNamespace(total_memory=self.total)

    def set_per_process_memory_fraction(self, fraction, device=None):
        self.fraction = fraction


def fake_meter() -> tuple[Meter, FakeCuda]:
    cuda = FakeCuda()
    no_nvml = SimpleNamespace(nvmlInit=lambda: (_ for _ in ()).throw(RuntimeError("no NVML")))
    return Meter(SimpleNamespace(cuda=cuda), "cuda", busy=GpuBusy(nvml=no_nvml)), cuda


def test_each_run_has_its_own_peak():
    meter, cuda = fake_meter()
    cuda.use(10)                                           # a warm-up, before the run
    _, first = meter.run(lambda: cuda.use(3))
    _, second = meter.run(lambda: cuda.use(1))
    assert (first["peak_gib"], second["peak_gib"]) == (3.0, 1.0)


def test_a_memory_limit_holds_during_the_run_only():
    meter, cuda = fake_meter()
    _, row = meter.run(lambda: cuda.use(2), memory_gib=4)
    assert cuda.fractions_seen == [0.25] and cuda.fraction == 1.0 and row["peak_gib"] == 2.0
    with pytest.raises(torch.OutOfMemoryError):
        meter.run(lambda: cuda.use(5), memory_gib=4)
    assert cuda.fraction == 1.0                            # lifted after a failure too


def test_phase_timings_are_the_runs_own():
    meter, _ = fake_meter()
    pipe = SimpleNamespace(decode_latents=lambda x: time.sleep(0.05) or x)
    timings = meter.time_phases(pipe, ["decode_latents"])
    meter.run(lambda: pipe.decode_latents(1))
    meter.run(lambda: None)                                # nothing decoded in this one
    assert timings == {}
    meter.run(lambda: pipe.decode_latents(1))
    assert 0.04 < timings["decode_latents"] < 1


def test_cpu_meter_has_no_peak():
    out, row = Meter(torch, "cpu", busy=GpuBusy(nvml=SimpleNamespace())).run(lambda: 42)
    assert out == 42 and row["peak_gib"] is None and row["s"] >= 0


def test_module_does_not_import_torch_itself():
    assert "torch" not in vars(bench_gpu_measure)
