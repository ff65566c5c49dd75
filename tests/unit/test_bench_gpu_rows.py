"""scripts/bench_gpu.py's rows, with a fake pipeline, generator and torch.cuda: each row's
peak is its own, the low row is compared with plain diffusers decoding as it does, a failed
configuration is a row and the next ones still run, step-cache counters are recorded, a
few-step preset's row runs at its steps with its ratio and target and no PSNR; and build()
reports the device the pipeline is on."""
from __future__ import annotations

import argparse
import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.helpers import ROOT

if str(ROOT / "scripts") not in sys.path:       # as scripts/bench.py puts it
    sys.path.insert(0, str(ROOT / "scripts"))

import bench_gpu  # noqa: E402
import bench_gpu_preset  # noqa: E402
from bench_gpu import BASELINE, Bench, table_rows  # noqa: E402
from tests.unit.test_bench_gpu_measure import fake_meter  # noqa: E402

from inference.loader import sampling_options  # noqa: E402
from inference.presets import PRESETS  # noqa: E402
from inference.svd import DECODE_CHUNKS  # noqa: E402

LOW_CHUNK = DECODE_CHUNKS["low"]


def frames_for(chunk: int) -> np.ndarray:
    """What the fakes "generate": frames that depend on how many frames are decoded at once."""
    return np.full((4, 8, 8, 3), 10 * chunk, dtype=np.uint8)


class FakePipe:
    """Plain diffusers: uses 2 + chunk/4 GiB (4 GiB decoding 8 frames at a time)."""

    def __init__(self, cuda):
        self.cuda, self.chunks = cuda, []

    def __call__(self, image, decode_chunk_size, **kw):
        self.chunks.append(decode_chunk_size)
        self.cuda.use(2 + decode_chunk_size / 4)
        return SimpleNamespace(frames=[frames_for(decode_chunk_size) / 255.0])

    def _encode_image(self, *a):
        pass

    def _encode_vae_image(self, *a):
        pass

    def decode_latents(self, *a):
        pass


class FakeGenerator:
    """3 GiB per video (1.5 in the low profile), 14 GiB to warm up; a step cache or not."""

    def __init__(self, cuda, step_cache: bool = False, preset=None):
        self.cuda, self.profile, self.profiles, self.batches = cuda, "full", [], []
        self.step_cache = SimpleNamespace(full_steps=0, cached_steps=0) if step_cache else None
        self.preset = preset
        self.guidance_slope = sampling_options(preset.scheduler, preset)["guidance_slope"] if preset else 1.0
        self.decode_chunk_size = min(DECODE_CHUNKS["full"], (preset and preset.decode_chunk) or 99)

    def set_profile(self, profile):
        self.profile = profile
        self.profiles.append(profile)

    def warm_up(self, sizes):
        self.cuda.use(14)

    def generate_batch(self, requests):
        self.batches.append([r.steps for r in requests])
        self.cuda.use(len(requests) * (1.5 if self.profile == "low" else 3))
        if self.step_cache is not None:
            self.step_cache.full_steps, self.step_cache.cached_steps = 2, 1
        chunk = DECODE_CHUNKS[self.profile]
        return [frames_for(chunk) for _ in requests]


@pytest.fixture
def bench(monkeypatch):
    meter, cuda = fake_meter()
    args = SimpleNamespace(size=(64, 64), frames=4, steps=2, fast_steps=3)
    bench = Bench(args, FakePipe(cuda), "cuda", "fake", meter=meter)

    def generator(steps=None, speed=None, warm_up=False, preset=None):
        gen = FakeGenerator(cuda, step_cache=speed is not None and speed.step_cache > 1,
                            preset=preset)
        gen.default_steps = steps or args.steps
        if warm_up:
            gen.warm_up([args.size])
        bench.generators.append(gen)
        return gen, 0.0
    bench.generators = []
    monkeypatch.setattr(bench, "generator", generator)
    bench.cuda_fake = cuda
    return bench


def run_all(bench, batches=(8, 2), low_limit=8.0):
    """The rows in cmd_gpu's order."""
    bench.attempt(BASELINE, bench.plain_row, 8, warm_up=True)
    gen, _ = bench.generator()
    bench.attempt("svd-server full", bench.generator_row, "svd-server full", gen)
    bench.attempt("svd-server low", bench.low, gen, "svd-server low", low_limit)
    for n in batches:
        name = f"svd-server batch of {n}"
        bench.attempt(name, bench.generator_row, name, gen, batch=n)
    bench.attempt("svd-server fast (FP8 auto)", bench.fast, "off", "auto")
    return gen


def test_each_row_has_its_own_peak(bench):
    run_all(bench)
    runs = bench.runs
    peaks = {name: r.get("peak_gib") for name, r in runs.items()}
    assert peaks == {BASELINE: 4.0, "svd-server full": 3.0,
                     f"plain diffusers (decode chunk {LOW_CHUNK})": 2 + LOW_CHUNK / 4,
                     "svd-server low": 1.5, "svd-server batch of 8": None,
                     "svd-server batch of 2": 6.0,
                     # its 14 GiB warm-up ran before the row: not in the row's peak
                     "svd-server fast (3 steps, step cache 3)": 3.0}
    # the low row ran under its limit (8 of 16 GiB), and nothing else did
    assert bench.cuda_fake.fraction == 1.0 and 0.5 in bench.cuda_fake.fractions_seen


def test_a_failed_row_is_a_row_and_the_next_rows_run(bench):
    run_all(bench, batches=(8, 2))
    assert bench.runs["svd-server batch of 8"]["s"] is None
    assert bench.runs["svd-server batch of 8"]["error"].startswith("out of memory")
    assert bench.runs["svd-server batch of 2"]["peak_gib"] == 6.0     # ran after the failure
    assert any(name.startswith("svd-server fast (") for name in bench.runs)
    assert any(row[1] == "FAILED" and "out of memory" in row[2] for row in table_rows(bench.runs))


def test_low_row_is_compared_with_plain_decoding_as_many_frames(bench):
    gen = run_all(bench)
    low = bench.runs["svd-server low"]
    key = f"plain_decode_chunk_{LOW_CHUNK}"
    assert low[f"psnr_vs_{key}"] == float("inf") and low[f"max_abs_diff_vs_{key}"] == 0
    assert "psnr_vs_plain" not in low
    assert bench.pipe.chunks == [8, 8, LOW_CHUNK]      # baseline warm-up + run, then once for low
    assert gen.profiles[-2:] == ["low", "full"]
    assert bench.runs["svd-server full"]["psnr_vs_plain"] == float("inf")


def test_low_row_that_fails_puts_the_profile_back(bench):
    bench.attempt(BASELINE, bench.plain_row)
    gen, _ = bench.generator()
    bench.attempt("svd-server low", bench.low, gen, "svd-server low", 1.0)  # 1.5 GiB needed
    assert bench.runs["svd-server low"]["error"].startswith("out of memory")
    assert gen.profiles == ["low", "full"] and bench.cuda_fake.fraction == 1.0


def test_step_cache_counters_are_recorded(bench):
    run_all(bench)
    fast = bench.runs["svd-server fast (3 steps, step cache 3)"]
    assert (fast["full_steps"], fast["cached_steps"]) == (2, 1)
    assert "cached_steps" not in bench.runs["svd-server full"]       # no step cache there
    row = [r for r in table_rows(bench.runs) if r[0].startswith("svd-server fast")][0]
    assert "2 full + 1 cached" in row[2]


def test_fp8_on_without_fp8_is_a_failed_fast_row(bench):
    bench.attempt(BASELINE, bench.plain_row)
    bench.attempt("svd-server fast (FP8 on)", bench.fast, "off", "on")
    assert bench.runs["svd-server fast (FP8 on)"] == {
        "s": None, "error": "ValueError: SVD_FP8=on: FP8 needs an NVIDIA GPU"}


def parse(*argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_gpu.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["gpu", *argv])


def test_exit_status_is_1_only_without_a_baseline(tmp_path, monkeypatch, capsys):
    class BrokenPipe(FakePipe):
        def __call__(self, *a, **kw):
            raise RuntimeError("plain diffusers broke")

    monkeypatch.setattr(bench_gpu, "build", lambda args: (BrokenPipe(None), "cpu", "fake"))
    out = tmp_path / "gpu.json"
    rc = bench_gpu.cmd_gpu(parse("--quick", "--runs", "fast", "--json", str(out)))
    runs = json.loads(out.read_text())["runs"]
    assert rc == 1 and runs[BASELINE] == {"s": None, "error": "RuntimeError: plain diffusers broke"}
    assert any(name.startswith("svd-server fast") for name in runs)     # still tried
    assert "FAILED" in capsys.readouterr().out


def test_quick_fast_run_takes_a_cached_step():
    from inference.speed import FAST_STEP_CACHE
    args = parse("--quick")
    steps = bench_gpu.QUICK_FAST_STEPS
    # StepCache runs the whole UNet at step % interval == 0 and at the last step
    assert any(s % FAST_STEP_CACHE and s != steps - 1 for s in range(steps))
    assert args.fast_steps is None                      # cmd_gpu sets it for --quick


def test_compile_help_says_max_is_no_cuda_graphs():
    from inference.speed import COMPILE_MODES
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    bench_gpu.add_parser(sub)
    text = " ".join(sub.choices["gpu"].format_help().split())
    assert COMPILE_MODES["max"] == "max-autotune-no-cudagraphs"
    assert "max (max-autotune kernel selection, no CUDA graphs)" in text
    assert "--fp8 {auto,on,off}" in text


def test_table_rows_without_a_baseline_or_with_failures():
    rows = table_rows({BASELINE: {"s": None, "error": "RuntimeError: x"},
                       "svd-server full": {"s": 1.0, "peak_gib": None, "busy": None}})
    assert rows[0][:3] == (BASELINE, "FAILED", "RuntimeError: x")
    assert rows[1][1].startswith("1.00 s, peak")                    # no ratio to a failed base


class MovablePipe:
    def __init__(self):
        self.device = torch.device("cpu")

    def to(self, device):
        self.device = torch.device(device)
        return self


def test_build_moves_the_tiny_model_to_cuda(monkeypatch):
    """--arch tiny on a CUDA machine: the pipeline is moved there and reported as there."""
    import inference.tiny
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(inference.tiny, "build_tiny_pipeline", MovablePipe)
    pipe, device, arch = bench_gpu.build(SimpleNamespace(arch="tiny", model=None))
    assert pipe.device.type == "cuda" and device.startswith("cuda") and arch == "tiny"


def test_build_reports_where_the_real_tiny_pipeline_is():
    pipe, device, arch = bench_gpu.build(SimpleNamespace(arch="tiny", model=None))
    assert str(pipe.device) == device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert all(p.device == pipe.device for p in pipe.unet.parameters())
    assert all(p.device == pipe.device for p in pipe.vae.parameters())


def test_failing_to_leave_low_is_not_the_low_rows_failure(bench):
    bench.attempt(BASELINE, bench.plain_row)
    gen, _ = bench.generator()
    leave = gen.set_profile

    def set_profile(profile):
        leave(profile)
        if profile == "full":
            raise torch.OutOfMemoryError("moving the pipeline back")
    gen.set_profile = set_profile
    bench.attempt("svd-server low", bench.low, gen, "svd-server low", None)
    assert bench.runs["svd-server low"]["s"] is not None
    assert bench.runs["svd-server back to the full profile"]["error"].startswith("out of memory")


LCM = PRESETS["animatelcm-svd-xt"]


def timed(bench, seconds: list[float]):
    """The meter's runs take these seconds, in turn."""
    run, left = bench.meter.run, iter(seconds)

    def fixed(fn, memory_gib=None):
        out, m = run(fn, memory_gib)
        return out, {**m, "s": next(left)}
    bench.meter.run = fixed


@pytest.mark.parametrize(("arch", "steps", "met"), [
    ("svd-xt-random", 25, True),      # SVD-XT on CUDA against 25 plain steps: judged
    ("svd-xt-random", 2, None),       # a 2-step baseline says nothing of the target
    ("tiny", 25, None)])              # nor does the tiny model
def test_preset_row(bench, arch, steps, met):
    bench.arch, bench.args.steps = arch, steps
    timed(bench, [10.0, 1.5])
    bench.attempt(BASELINE, bench.plain_row)
    name = bench_gpu_preset.preset_name(LCM, arch)
    bench.attempt(name, bench.preset, LCM, name)
    row = bench.runs[name]
    gen = bench.generators[-1]
    assert gen.preset is LCM and gen.default_steps == 4
    assert gen.batches == [[4], [4]]                   # an untimed video, then the row's
    assert row["steps"] == 4 and row["sampler"] == "animatelcm" and row["preset"] == LCM.name
    assert (row["guidance_slope"], row["decode_chunk"]) == (0.25, 4)
    assert 1.5 <= row["s"] < 1.6 and row["ratio_vs_plain"] == round(row["s"] / 10.0, 3)
    assert row["target_ratio"] == 0.18 and row["target_met"] is met
    assert ("target_note" in row) == (met is None)
    assert not any(k.startswith(("psnr_vs_", "max_abs_diff_vs_")) for k in row)
    assert "another sampler" in row["psnr_note"]
    assert "random weights, not AnimateLCM's" in name and "4 steps" in name
    table = {r[0]: r for r in table_rows(bench.runs)}
    assert table[name][3] is met and "target x0.18 or less" in table[name][2]
    assert "no PSNR" in table[name][2] and table[BASELINE][3] is None


def test_preset_target_is_judged_on_a_gpu_only():
    assert bench_gpu_preset.judge_preset(0.19, "cuda:0", "svd-xt-random", 25) == (False, None)
    assert bench_gpu_preset.judge_preset(0.18, "cuda:0", "/models/svd-xt", 25) == (True, None)
    met, why = bench_gpu_preset.judge_preset(0.1, "cpu", "svd-xt-random", 25)
    assert met is None and "not judged" in why
    assert bench_gpu_preset.judge_preset(None, "cuda:0", "svd-xt-random", 25)[0] is None


def test_preset_row_names_whose_weights_it_runs():
    assert "SVD-XT architecture's random weights" in bench_gpu_preset.preset_name(LCM, "svd-xt-random")
    assert "tiny model's random weights" in bench_gpu_preset.preset_name(LCM, "tiny")
    assert "UNet weights of /m/svd-xt, not AnimateLCM's" in bench_gpu_preset.preset_name(LCM, "/m/svd-xt")


def test_preset_option(capsys):
    assert parse("--quick", "--preset", "animatelcm-svd-xt").preset == "animatelcm-svd-xt"
    assert parse().preset is None                        # no preset row unless asked
    for name, says in [("nope", "unknown preset 'nope'"), ("svd-xt", "'svd-xt' samples as plain")]:
        with pytest.raises(SystemExit):
            parse("--preset", name)
        err = capsys.readouterr().err
        assert f"argument --preset: {says}" in err and "few-step presets: animatelcm-svd-xt" in err


def test_preset_samples_as_the_loader_serves_it():
    """The row's generator is the one SVD_MODEL=animatelcm-svd-xt serves, but for weights."""
    from inference.loader import ModelChoice, load_generator
    served = load_generator(ModelChoice("tiny", None, "cpu", preset=LCM),
                            cpu_threads=torch.get_num_threads(), memory_profile="full")
    ours = sampling_options(LCM.scheduler, LCM)
    assert type(served.scheduler) is type(ours["scheduler"])
    assert vars(served.scheduler).keys() == vars(ours["scheduler"]).keys()
    assert all(getattr(served.scheduler, k) == v for k, v in vars(ours["scheduler"]).items()
               if isinstance(v, (int, float)))
    assert served.guidance_slope == ours["guidance_slope"] == 0.25
    assert served.max_decode_chunk == ours["max_decode_chunk"] == 4
    assert served.default_steps == LCM.steps == 4
