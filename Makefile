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

demo: shards-demo
	@echo "demo shards ready in $(DEMO_SHARDS) (training stages land with the trainer/launcher issues)"

bench: install
	$(PY) benchmarks/make_shards.py

clean:
	rm -rf $(VENV) cache runs .pytest_cache
