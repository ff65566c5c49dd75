"""The house rules on imports: the web layer starts without torch, inference without FastAPI."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.helpers import ROOT

CHECK = textwrap.dedent("""
    import importlib, pkgutil, sys

    BLOCKED = set(sys.argv[2].split(","))

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} must not be imported here")
            return None

    sys.meta_path.insert(0, Block())
    package = importlib.import_module(sys.argv[1])
    names = [sys.argv[1]] + [m.name for m in pkgutil.walk_packages(package.__path__, sys.argv[1] + ".")]
    for name in names:
        if name.endswith("env"):          # alembic's env.py only runs inside alembic
            continue
        importlib.import_module(name)
    print(len(names))
""")


def run_check(package: str, blocked: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHECK, package, blocked], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return int(out.stdout.strip())


def test_every_app_module_imports_without_torch_diffusers_transformers():
    assert run_check("app", "torch,diffusers,transformers,accelerate") >= 15


def test_every_inference_module_imports_without_the_web_layer():
    assert run_check("inference", "fastapi,starlette,uvicorn,app,sqlalchemy") >= 7
