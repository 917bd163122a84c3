# Two commands: `make run` (set up .venv and run the main job) and `make test` (set up and run the tests).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints-cpu.txt | cksum | cut -d' ' -f1)
# CPU machines get the local CPU build of PyTorch; elsewhere `pip install -e .` picks the platform's torch.
CONSTRAINTS ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints-cpu.txt)

TEST_STAMP := $(VENV)/.test-services
RUN_DIR ?= runs/demo
# pytest-xdist workers for `make test`: most tests wait on a subprocess (the sandbox, a discovery run, a server)
# or train on one thread, so two workers keep both cores of a CI machine busy. TEST_WORKERS=0 runs in-process.
TEST_WORKERS ?= 2
# extra pytest arguments (e.g. PYTEST_ARGS="-k sandbox"); the slowest tests are listed at the end of a run
PYTEST_ARGS ?= --durations=25

.PHONY: setup run test test-fast test-gpu bench clean

$(STAMP):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(CONSTRAINTS) -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

# llama.cpp builds for the build machine's CPU by default; on CPUs that advertise AMX inside VMs that do not
# enable it, its AMX kernels die with a general protection fault at the first generation (seen here). Build
# it for portable AVX2 instead, without a cached wheel from an earlier build.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

$(TEST_STAMP): $(STAMP) scripts/setup_test_services.sh Makefile
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q --no-cache-dir $(CONSTRAINTS) -e ".[test]"
	sh scripts/setup_test_services.sh $(PY)
	touch $@

# The main job, offline: two baselines + 3 catalog iterations on the `tiny` profile, on the CPU.
run: setup
	$(VENV)/bin/mixerlab discover --proposer catalog --profile tiny --iterations 3 --device cpu \
		--run-dir $(RUN_DIR) $(if $(wildcard $(RUN_DIR)/mixerlab.db),--resume,)

test: setup $(TEST_STAMP)
	$(PY) -m pytest -m "not gpu" -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# The tier of tests not marked slow, for the edit-test loop; `make test` runs it too, with the rest. It starts no
# background discovery run (tests on the session's tiny run are slow-marked). Measured on 2 cores: 428 tests in
# 82 s (1 min 24 s with pytest's start).
test-fast: setup
	$(PY) -m pytest -m "not gpu and not slow" -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test-gpu: setup
	$(PY) -m pytest -m gpu -q

bench: setup
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
