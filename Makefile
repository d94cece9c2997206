# edgekit: `make deploy` runs the main job, `make test` the test suite. Both create the virtual
# environment first when it is missing or older than pyproject.toml: deploy installs what the job needs
# (.[host,device]), test and lint add the dev tools (.[dev]) on top, each once.
# TORCH_INDEX=https://download.pytorch.org/whl/cpu: PyTorch's CPU build from that index (same pins),
# instead of PyPI's CUDA build, for machines without an NVIDIA GPU.
PYTHON ?= python3
VENV   ?= .venv
TARGET ?= cpu
RECIPE ?= digits
OUT    ?=
ARGS   ?=
RESULTS   ?= benchmarks/results
DASHBOARD ?= benchmarks/dashboard/index.html

TORCH_INDEX ?=

BIN       := $(VENV)/bin
STAMP     := $(VENV)/.edgekit-installed
STAMP_DEV := $(VENV)/.edgekit-dev-installed
# torch and torchvision as pyproject.toml pins them, for the TORCH_INDEX install
TORCH_PINS = $(shell sed -n 's/^ *"\(torch\(vision\)\{0,1\}==[^"]*\)",*$$/\1/p' pyproject.toml)
OUT_ARG := $(if $(OUT),--out $(OUT),)
# The device's interpreter that runs the jobs (default: the target's python_bin, else python3 there).
DEVICE_PYTHON_ARG := $(if $(DEVICE_PYTHON),--device-python $(DEVICE_PYTHON),)
ART     := $(if $(OUT),$(OUT),artifacts/$(RECIPE))

.PHONY: deploy dashboard test test-device typecheck lint venv clean help compare docker-jetson docker-host docker-cpu

help:
	@echo "make deploy [TARGET=cpu] [RECIPE=digits] [OUT=dir]   run the main job here"
	@echo "make deploy TARGET=xavier DEVICE=user@host [SSH_PORT=22] [SSH_KEY=~/.ssh/id] [DEVICE_PYTHON=path]"
	@echo "                                                    measure on a device (its Python: DEVICE_PYTHON)"
	@echo "make deploy GPUS=N [RUN_ARGS=...]                  host stages on N GPUs (torchrun), then the deploy"
	@echo "make dashboard                                     benchmarks/dashboard/index.html from every result"
	@echo "make deploy TORCH_INDEX=https://download.pytorch.org/whl/cpu  the same, with PyTorch's CPU build"
	@echo "make test                                          run the test suite (adds the dev tools to .venv)"
	@echo "make lint                                          ruff + the Python 3.8 check of device-side code"
	@echo "make typecheck                                     mypy: the TensorRT and CUDA calls against their stubs"

venv: $(STAMP_DEV)

$(STAMP): pyproject.toml .ci/typecheck.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifdef TORCH_INDEX
	$(BIN)/python -m pip install --quiet --index-url $(TORCH_INDEX) $(TORCH_PINS)
endif
	$(BIN)/python -m pip install --quiet -e '.[host,device]'
	@touch $@

$(STAMP_DEV): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[host,device,dev]'
	# tensorrt-stubs, --no-deps and outside site-packages: the type check and the fakes' stub test read it
	$(BIN)/python .ci/typecheck.py --install
	@touch $@

# GPUS=N: the host stages first run under torchrun, one process per GPU (RUN_ARGS: extra `edgekit run`
# arguments, e.g. --set train.precision=bf16); the deploy below then reuses every finished stage.
GPUS     ?=
RUN_ARGS ?=

deploy: $(STAMP)
ifdef GPUS
	$(BIN)/torchrun --standalone --nproc_per_node=$(GPUS) -m edgekit.cli run --recipe $(RECIPE) $(OUT_ARG) $(RUN_ARGS)
endif
ifdef DEVICE
	$(BIN)/edgekit deploy --target $(TARGET) --device $(DEVICE) $(if $(SSH_PORT),--ssh-port $(SSH_PORT),) \
	  $(if $(SSH_KEY),--ssh-key $(SSH_KEY),) $(DEVICE_PYTHON_ARG) --recipe $(RECIPE) $(OUT_ARG) --results $(RESULTS) \
	  --dashboard $(DASHBOARD) $(ARGS)
else
	$(BIN)/edgekit deploy --target $(TARGET) $(DEVICE_PYTHON_ARG) --recipe $(RECIPE) $(OUT_ARG) --results $(RESULTS) \
	  --dashboard $(DASHBOARD) $(ARGS)
endif

# The results store and the page: every result JSON under $(RESULTS), indexed, one offline HTML file
# (deploy refreshes it itself after each fetch).
dashboard: $(STAMP)
	$(BIN)/edgekit dashboard --results $(RESULTS) --out $(DASHBOARD)

test: $(STAMP_DEV)
	$(BIN)/python -m pytest -q

# Every module that calls TensorRT, checked by mypy against tensorrt-stubs and cuda-python's bindings.
typecheck: $(STAMP_DEV)
	$(BIN)/python .ci/typecheck.py

# On a Jetson or a GPU host with TensorRT (e.g. inside docker/jetson): the hardware tiers.
test-device: $(STAMP_DEV)
	$(BIN)/python -m pytest -q -m "tensorrt or gpu"

lint: $(STAMP_DEV)
	$(BIN)/ruff check edgekit tests
	# everything outside edgekit/host/ runs on the device: Python 3.8, checked as whole folders
	$(BIN)/vermin -t=3.8- --no-tips --violations --eval-annotations --exclude-regex 'edgekit/host/' edgekit

clean:
	rm -rf artifacts .pytest_cache

compare: $(STAMP)
	$(BIN)/python benchmarks/compare.py --recipe $(RECIPE) $(OUT_ARG) $(ARGS)

# Docker images (need a Docker engine: docker-jetson on the Jetson itself, aarch64). The tag is the
# `image:` of edgekit/presets/targets/$(JETSON).yaml, so deploy finds what this built.
JETSON ?= xavier
ifeq ($(JETSON),orin)
JETSON_TAG := r36.4.0
JETSON_ARGS := --build-arg L4T_TRT_DEVEL=nvcr.io/nvidia/l4t-jetpack:$(JETSON_TAG) \
  --build-arg L4T_TRT_RUNTIME=nvcr.io/nvidia/l4t-jetpack:$(JETSON_TAG) \
  --build-arg L4T=$(JETSON_TAG) --build-arg TENSORRT=10.3 --build-arg PYTHON=3.10
else ifeq ($(JETSON),xavier)
JETSON_TAG := r35.4.1
JETSON_ARGS :=
endif

docker-jetson:
	@test -n "$(JETSON_TAG)" || { echo "make: JETSON must be xavier or orin, got '$(JETSON)'" >&2; exit 2; }
	docker build -f docker/jetson/Dockerfile $(JETSON_ARGS) -t edgekit/jetson:$(JETSON_TAG) .

docker-host:
	docker build -f docker/host/Dockerfile -t edgekit/host:trt10 .

docker-cpu:
	docker build -f docker/cpu/Dockerfile -t edgekit/cpu .
