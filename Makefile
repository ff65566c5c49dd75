# make install · make serve · make test   (everything else: see README.md)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# Optional extra index for torch (e.g. PyTorch's CPU wheel index on a machine without a GPU,
# to avoid downloading the multi-GB CUDA build that PyPI serves for Linux).
TORCH_INDEX_URL ?=

comma := ,
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
EXTRAS := $(if $(HAS_GPU),dev$(comma)gpu,dev)

.PHONY: install serve test clean

install: $(VENV)/.installed

# torch first and pinned, so that installing the project finds it satisfied and never pulls
# another build. Where there is no NVIDIA GPU, the [gpu] extra is skipped.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)" \
		$(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL),)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@echo "installed ($(if $(HAS_GPU),GPU,CPU) build of torch $(TORCH_VERSION), extras: $(EXTRAS))"
	touch $@

serve: install
	$(VENV)/bin/svd-server serve

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
