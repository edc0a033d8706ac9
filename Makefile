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

.PHONY: install system test test-slow demo shards-demo bench clean app

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

# the tests left out of `make test` for time (marked slow: further cases of code paths the default
# tier already runs once - more ZeRO stages, resume cycles, paper configs, launchers); .ci/run runs both
test-slow: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

shards-demo: install
	$(PY) tools/make_shards.py demo --out $(DEMO_SHARDS)

# The main job on real footage, through the same launcher as a Slurm cluster (submitit's local
# executor here): LSMCL pretraining of S5 over frozen EfficientNet-Lite0 (2 DeepSpeed ranks), then
# three finetunes - S5 from the pretraining, S5 from scratch, plain ViS4mer from scratch - each
# tested once on the model selected on val; prints a table, writes runs/demo/summary.json + plots.
demo: shards-demo
	rm -rf runs/demo
	$(PY) launchers/submit.py --local pipeline --config configs/demo_pretrain.yaml data.shards=$(DEMO_SHARDS)

# The web page (gradio) on http://127.0.0.1:7860: upload a video -> top-5 classes, windows, a caption.
# After `make demo`: its finetuned S5 and its captioner (each exported on first use).
APP_MODEL ?= runs/demo/finetune
APP_CAPTIONER ?= runs/demo/caption
app: install
	$(PY) tools/app.py --model $(APP_MODEL) --captioner $(APP_CAPTIONER)

bench: install
	$(PY) benchmarks/make_shards.py

clean:
	rm -rf $(VENV) cache runs .pytest_cache
