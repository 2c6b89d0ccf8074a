# Quick start: `make demo` and `make test` each install what they need first (idempotent).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
DEMO_OUT ?= demo_output

.PHONY: install demo test lint bank bench

# torch first, pinned to the release these machines carry as a CPU wheel; anything looser pulls a CUDA build.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	@$(PIP) install -q -e ".[test]"

demo: install
	$(PYTHON) scripts/demo.py --out $(DEMO_OUT)

test: install
	$(PYTHON) -m pytest -q tests

lint:
	$(PYTHON) -m ruff check synth_transforms scripts tests

bank: install
	$(PYTHON) scripts/build_default_bank.py

bench: install
	$(PYTHON) scripts/benchmark_synthesis.py
