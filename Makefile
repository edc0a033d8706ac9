# s5video - the two commands of the README are `make demo` and `make test`.
# Each creates/reuses .venv in the repo root and installs what it needs (Debian packages included).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.s5video-installed
DEMO_SHARDS ?= cache/demo_shards
PYTEST_ARGS ?=

.PHONY: install system test demo shards-demo bench clean

system:
	bash scripts/install_system.sh

$(STAMP): setup.py $(CONSTRAINTS) scripts/install_system.sh
	bash scripts/install_system.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: the CPU build on CPU machines; nothing may upgrade it afterwards.
	$(PIP) install -q -c $(CONSTRAINTS) torch==2.13.0
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[dali,ffcv,dev]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

shards-demo: install
	$(PY) tools/make_shards.py demo --out $(DEMO_SHARDS)

# The main job on real footage: LSMCL pretraining of S5 over frozen EfficientNet-Lite0 (2 ranks,
# DeepSpeed on CPU or GPU), then finetuning from it and a test evaluation of the model selected
# on val. (The Slurm/submitit launcher and the baselines summary come with their issues.)
DS := $(VENV)/bin/deepspeed --num_gpus 2
demo: shards-demo
	$(DS) trainer/main.py --config configs/demo_pretrain.yaml data.shards=$(DEMO_SHARDS) checkpoint.resume=none
	$(DS) trainer/main.py --config configs/demo_finetune.yaml data.shards=$(DEMO_SHARDS) \
		run.init_from=runs/demo/pretrain checkpoint.resume=none
	@cat runs/demo/finetune/results.json

bench: install
	$(PY) benchmarks/make_shards.py

clean:
	rm -rf $(VENV) cache runs .pytest_cache
