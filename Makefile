# The project's single entry point. `make demo` and `make test` each set everything up
# first (tools/bootstrap.py: idempotent, seconds once done) and then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# `make test-official`: the suite on official detectron2, built from this source into its own venv.
DETECTRON2_SOURCE ?= git+https://github.com/facebookresearch/detectron2.git
OFFICIAL_VENV ?= .venv-official

.PHONY: setup demo test test-official test-slow env benchmark clean

setup:
	@$(PYTHON) tools/bootstrap.py --venv $(VENV)

demo: setup
	$(PY) -m afa_d2.demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-official:
	@$(PYTHON) tools/bootstrap.py --venv $(OFFICIAL_VENV) --detectron2-source "$(DETECTRON2_SOURCE)"
	$(OFFICIAL_VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

env: setup
	$(PY) -m afa_d2.env

benchmark: setup
	$(PY) tools/benchmark.py

clean:
	rm -rf $(VENV) $(OFFICIAL_VENV) .cache .pytest_cache
