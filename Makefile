# Two commands: `make run` (set up .venv and run the main job) and `make test` (set up and run the tests).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints-cpu.txt | cksum | cut -d' ' -f1)
# CPU machines get the local CPU build of PyTorch; elsewhere `pip install -e .` picks the platform's torch.
CONSTRAINTS ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints-cpu.txt)

.PHONY: setup run test test-gpu bench clean

$(STAMP):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(CONSTRAINTS) -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

run: setup
	$(VENV)/bin/mixerlab eval --mixer delta_net --profile tiny --device cpu

test: setup
	$(PY) -m pytest -m "not gpu" -q

test-gpu: setup
	$(PY) -m pytest -m gpu -q

bench: setup
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
