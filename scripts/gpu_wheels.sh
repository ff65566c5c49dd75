#!/usr/bin/env bash
# Fetch into .whl/ the wheels that scripts/gpu_check.sh needs on a GPU machine that has no
# network and whose Python and torch differ from ours. Run it where PyPI is reachable, then
# carry .whl/ with the repo to the GPU machine: gpu_check.sh installs .whl/*.whl there.
#
#   scripts/gpu_wheels.sh [PYTHON_VERSION] [TORCH_VERSION]     download, check, print sizes
#   scripts/gpu_wheels.sh --list [PYTHON_VERSION] [TORCH_VERSION]   the pins, NAME==VERSION
#   scripts/gpu_wheels.sh --check [PYTHON_VERSION] [TORCH_VERSION]  check .whl/ as it is
#   scripts/gpu_wheels.sh --on-device                           the packages the GPU has
#
# Defaults: Python 3.12 and torch 2.11.0(+cu130), the H200 machine we are lent. Only the
# download needs the network.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=download
case "${1:-}" in
  --list|--check|--on-device) mode="${1#--}"; shift ;;
esac
python_version="${1:-3.12}"
torch_version="${2:-2.11.0}"

# Our own environment, whose versions are the ones we tested: .venv's Python, else python3;
# WHEELS_PYTHON names another (the test passes its own).
PY="${WHEELS_PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3

# torchao states no torch requirement, yet each release is built against one torch.
case "$torch_version" in
  2.9.0*) torchao=0.14.1 ;;
  2.9.1*) torchao=0.15.0 ;;
  2.10.*) torchao=0.16.0 ;;
  2.11.*) torchao=0.17.0 ;;
  2.1[2-9].*|2.[2-9][0-9].*|[3-9].*) torchao=0.18.0 ;;
  *) echo "gpu_wheels: no torchao known to work with torch $torch_version" >&2; exit 2 ;;
esac

# What the GPU machine lacks of what the project imports there (bench.py gpu|worker|startup,
# pytest tests/gpu), with the whole chain of their requirements that it lacks too. Each
# version is the one in our .venv where it has it (the code we tested); the version here is
# the fallback. pydantic-core is pinned to exactly what pydantic requires, torchao by torch.
# uvicorn's other "standard" extras (websockets, watchfiles, uvloop) are left out: uvicorn
# runs without them. httptools is carried: the server's HTTP protocol is built on it.
CARRY="
diffusers          0.42.1   the pipeline
importlib-metadata 10.2.0   required by diffusers
lazy-importer      0.1.0    required by importlib-metadata before Python 3.15
av                 18.1.0   MP4 encoding (PyAV)
torchao            -        fast mode's FP8 matmuls; pinned by torch above
fastapi            0.165.0  the API
fastapi-offline    1.7.7    the Swagger UI files /docs serves (no CDN)
starlette          1.10.0   required by fastapi
opentelemetry-api  1.45.2   required by fastapi
uvicorn            0.55.0   the server
httptools          0.9.0    its HTTP parser, under app/http_guard.py's limits
python-multipart   0.0.34   form uploads
pydantic           2.14.4   settings and API models
pydantic-core      2.50.5   required by pydantic, exactly
annotated-types    0.8.0    required by pydantic
typing-inspection  0.4.5    required by pydantic
typing-extensions  4.16.0   pydantic needs >=4.16.0; the GPU's version is not known
pydantic-settings  2.16.3   settings
python-dotenv      1.2.4    required by pydantic-settings
sqlalchemy         2.1.9    the job store
alembic            1.20.1   its migrations
mako               1.4.3    required by alembic
"

# Every package the GPU machine has, as its image's package list gives them (read 2026-11-17),
# with the version where that list gives one; torch's is TORCH_VERSION. A requirement on one
# of these needs no wheel.
ON_DEVICE="
absl-py accelerate==1.15.0 aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio
attrs botorch==0.18.1 build certifi charset-normalizer chex click cloudpickle cmake colorama
contourpy coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x==14.2.0
cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch==1.15.2 grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub==1.33.0 humanize hypothesis idna imageio iniconfig interface-meta jax==0.11.2
jax-cuda13-pjrt==0.11.2 jax-cuda13-plugin==0.11.2 jaxlib==0.11.2 jaxtyping==0.3.11 jinja2
joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite
lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda
numpy==2.5.2 numpyro==0.21.0 nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx==1.23.1 onnx-ir==1.0.0
onnxruntime==1.30.0 onnxscript==0.7.2 opencv-python-headless optax opt-einsum opt-einsum-fx
optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning==2.6.6 pyyaml regex requests rich sacrebleu
safetensors==0.8.0 scikit-build-core scikit-image scikit-learn scipy seaborn
sentencepiece==0.2.2 sentence-transformers==6.0.1 setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken==0.14.0 timm tokenizers==0.23.2 toolz torch==$torch_version
torchaudio torchdiffeq==0.2.5 torch-geometric==2.8.0.post1 torchmetrics==1.9.0
torchvision==0.26.0 tqdm transformers==5.17.0 treescope triton==3.6.0 typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp
"

# What gpu_check.sh imports beyond pyproject.toml's main dependencies (which --check reads).
EXTRA_ROOTS="torchao nvidia-ml-py pytest pytest-timeout"

# One Python helper for what bash does badly: versions, wheel metadata, markers.
helper() {
  CARRY="$CARRY" ON_DEVICE="$ON_DEVICE" EXTRA_ROOTS="$EXTRA_ROOTS" TORCHAO="$torchao" \
  PYTHON_VERSION="$python_version" "$PY" - "$@" <<'PY'
import email.parser, importlib.metadata as md, os, subprocess, sys, zipfile
from pathlib import Path
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name as canon
    from packaging.version import Version
except ImportError:  # a bare python3: pip carries packaging
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name as canon
    from pip._vendor.packaging.version import Version

def pins():
    """NAME -> VERSION: our .venv's version, else the script's fallback."""
    out = {}
    for line in os.environ["CARRY"].strip().splitlines():
        name, default = line.split()[:2]
        if name == "torchao":
            out[name] = os.environ["TORCHAO"]
            continue
        if name == "pydantic-core":
            try:  # exactly what our pydantic requires
                reqs = [Requirement(r) for r in md.requires("pydantic") or []]
                exact = [str(s.version) for r in reqs if canon(r.name) == "pydantic-core"
                         for s in r.specifier if s.operator == "=="]
                out[name] = exact[0] if exact else default
            except md.PackageNotFoundError:
                out[name] = default
            continue
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = default
    return out

def on_device():
    """NAME -> VERSION or None (present, version unknown)."""
    out = {}
    for item in os.environ["ON_DEVICE"].split():
        name, _, version = item.partition("==")
        out[canon(name)] = version or None
    return out

def check():
    """Every requirement of every wheel (and of the project) is a wheel or on the device."""
    import tomllib  # Python 3.11+; --list and --on-device work without it
    py = os.environ["PYTHON_VERSION"]
    env = {"python_version": py, "python_full_version": py + ".0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython",
           "extra": ""}   # an empty extra: `extra == "..."` requirements don't apply
    device, wheels, needs, problems, notes = on_device(), {}, [], [], []
    for path in sorted(Path(".whl").glob("*.whl")):
        name, version = path.name.split("-")[:2]
        name = canon(name)
        if name in wheels:
            problems.append(f"two versions of {name}: {wheels[name]} and {version}")
        wheels[name] = version
        with zipfile.ZipFile(path) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            headers = email.parser.BytesHeaderParser().parsebytes(z.read(meta))
        needs += [(name, r) for r in headers.get_all("Requires-Dist") or []]
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]["dependencies"]
    needs += [("svd-server", r) for r in project + os.environ["EXTRA_ROOTS"].split()]
    used = set()
    for who, text in needs:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate(env):
            continue
        name = canon(req.name)
        used.add(name)
        if name in wheels:
            have = wheels[name]
        elif name in device:
            have = device[name]
            if have is None:
                if req.specifier:
                    notes.append(f"{req.name}{req.specifier}")
                continue
        else:
            problems.append(f"{who} needs {req}: neither in .whl/ nor on the GPU")
            continue
        if not req.specifier.contains(Version(have.split("+")[0]), prereleases=True):
            problems.append(f"{who} needs {req}, but {name} is {have}")
    problems += [f"{n} {v} in .whl/ is needed by nothing" for n, v in wheels.items()
                 if n not in used]
    if notes:  # on the GPU, in a version the list above does not give
        print("not checked, the GPU's version not known:", ", ".join(sorted(set(notes))))
    if not wheels:
        problems.append("no wheels in .whl/")
    for p in problems:
        print("PROBLEM:", p)
    print(f"check: {len(wheels)} wheels, {len(problems)} problems")
    return 1 if problems else 0

def prune():
    """Remove wheels of other versions (an earlier run's): two versions stop the install."""
    want = {canon(n): v for n, v in pins().items()}
    for path in Path(".whl").glob("*.whl"):
        name, version = path.name.split("-")[:2]
        if want.get(canon(name)) != version:
            print("removing", path)
            path.unlink()

def sizes():
    """The wheels' sizes; they travel with the tracked files, 64 MiB in all."""
    total = 0
    for path in sorted(Path(".whl").glob("*.whl")):
        size = path.stat().st_size
        total += size
        print(f"{size / 2**20:8.2f} MiB  {path.name}")
    files = subprocess.run(["git", "ls-files", "-z"], capture_output=True, text=True).stdout
    tracked = sum(p.stat().st_size for p in map(Path, files.split("\0")) if p.is_file())
    print(f"{total / 2**20:8.2f} MiB  in all, with {tracked / 2**20:.2f} MiB of tracked files")
    if total > 56 * 2**20:
        print("TOO BIG: over 56 MiB of wheels; the GPU machine takes 64 MiB with the repo")
        return 1
    return 0

cmd = sys.argv[1]
if cmd == "pins":
    print("\n".join(f"{n}=={v}" for n, v in pins().items()))
elif cmd == "on-device":
    print("\n".join(os.environ["ON_DEVICE"].split()))
else:
    sys.exit({"check": check, "prune": prune, "sizes": sizes}[cmd]() or 0)
PY
}

case "$mode" in
  list) helper pins; exit ;;
  on-device) helper on-device; exit ;;
  check) helper check; exit ;;
esac

mkdir -p .whl
pins=$(helper pins)   # apart from mapfile, so that set -e sees it fail
mapfile -t wanted <<<"$pins"
# Wheels only, for the GPU's Python on x86-64 Linux. pip matches each manylinux tag exactly,
# so name every one these packages use, none newer than the manylinux_2_28 the GPU takes.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${wanted[@]}"
helper prune
# Both reports, whichever fails.
status=0
helper check || status=1
helper sizes || status=1
exit "$status"
