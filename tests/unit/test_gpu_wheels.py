"""scripts/gpu_wheels.sh: the wheels the GPU machine lacks, pinned as we tested them.

Offline: only the script's --list and --on-device modes run, with this interpreter's packages.
"""
from __future__ import annotations

import functools
import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_wheels.sh"
# The GPU machine's Python, for requirement markers.
GPU_PYTHON = {"python_version": "3.12", "python_full_version": "3.12.3"}


def script(*args: str) -> list[str]:
    out = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                         timeout=30, check=True,
                         env={**os.environ, "WHEELS_PYTHON": sys.executable}).stdout
    return out.split()


@functools.cache
def pins(torch: str = "2.11.0") -> dict[str, str]:
    return {canonicalize_name(n): v for n, _, v in
            (line.partition("==") for line in script("--list", "3.12", torch))}


@pytest.mark.parametrize("torch, torchao", [("2.9.1", "0.15.0"), ("2.10.0", "0.16.0"),
                                            ("2.11.0", "0.17.0"), ("2.13.0", "0.18.0")])
def test_torchao_follows_torch(torch, torchao):
    assert pins(torch)["torchao"] == torchao


def test_no_torchao_for_an_older_torch():
    with pytest.raises(subprocess.CalledProcessError):
        script("--list", "3.12", "2.8.0")


def test_pydantic_core_is_what_our_pydantic_requires():
    exact = [str(s.version) for r in map(Requirement, md.requires("pydantic") or [])
             if canonicalize_name(r.name) == "pydantic-core" for s in r.specifier
             if s.operator == "=="]
    carried = pins()
    assert carried["pydantic"] == md.version("pydantic")
    assert [carried["pydantic-core"]] == exact


def test_everything_the_project_needs_is_carried_or_on_the_gpu():
    carried = pins()
    on_gpu = {canonicalize_name(item.partition("==")[0]) for item in script("--on-device")}

    def applies(req: Requirement, extra: str) -> bool:
        return req.marker is None or req.marker.evaluate({**GPU_PYTHON, "extra": extra})

    # The main dependencies and the gpu extra (torchao, nvidia-ml-py). Extras such as
    # uvicorn[standard] are not followed: uvicorn runs without them.
    reqs = [r for r in map(Requirement, md.requires("svd-server") or [])
            if applies(r, "") or applies(r, "gpu")]
    missing, seen = [], set()
    while reqs:
        req = reqs.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        if name in on_gpu:
            continue  # what the GPU has brings its own requirements
        if name not in carried:
            missing.append(str(req))
            continue
        try:
            reqs += [r for r in map(Requirement, md.requires(name) or []) if applies(r, "")]
        except md.PackageNotFoundError:
            pass  # carried, but not in our environment: --check reads its wheel instead
    assert not missing, f"neither carried nor on the GPU: {missing}"
    assert {"diffusers", "av", "torchao", "fastapi", "pydantic-core", "sqlalchemy"} <= seen
