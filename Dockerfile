# svd-server on an NVIDIA GPU.
#
#   docker compose build
#   docker compose run --rm svd-server python scripts/download_weights.py   # needs HF_TOKEN
#   docker compose up -d
#
# The CUDA libraries come with the torch wheel from PyPI (torch 2.13's default Linux wheel is
# built for CUDA 13.0), so the host needs only the NVIDIA driver (580 or newer for CUDA 13) and
# the NVIDIA Container Toolkit. The base image's CUDA version matches the wheel's, so that the
# container toolkit's driver check agrees with what torch needs.
ARG BASE_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Ubuntu 24.04's Python is 3.12. PyAV and Pillow wheels bundle FFmpeg and the image codecs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

WORKDIR /app

# Dependencies first, from pyproject.toml alone: this layer (torch and friends, several GB) is
# rebuilt only when the dependencies change, not on every code change. The `postgres` extra
# (psycopg) is for several processes sharing one PostgreSQL (docs/scaling.md).
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; o = p['optional-dependencies']; print('\n'.join(p['dependencies'] + o['gpu'] + o['postgres']))" > /tmp/requirements.txt \
    && pip install "torch==${TORCH_VERSION}" -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the code. Every dependency is already there, so this only installs the package itself.
COPY app ./app
COPY inference ./inference
COPY scripts ./scripts
RUN pip install '.[gpu,postgres]' \
    && rm -rf build ./*.egg-info \
    && svd-server --help > /dev/null \
    && python -I -c "import app.main, inference.loader, psycopg"

# Non-root. The volume directories are created (and owned) before VOLUME, so that new named
# volumes start out writable by this user.
RUN groupadd --gid 10001 svd \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin svd \
    && mkdir -p /data /models \
    && chown svd:svd /data /models && chmod 700 /data

ENV SVD_HOST=0.0.0.0 \
    SVD_PORT=8000 \
    SVD_DATA_DIR=/data \
    HF_HOME=/models

VOLUME ["/data", "/models"]
USER 10001:10001
EXPOSE 8000

# /healthz answers while the process lives; /readyz (503 until the model is loaded) is for
# load balancers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SVD_PORT', '8000'), timeout=4)"]

CMD ["svd-server", "serve"]
