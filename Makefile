# The project's single entry point. `make demo` and `make test` each set everything up
# first (tools/bootstrap.py: idempotent, seconds once done) and then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow env benchmark clean

setup:
	@$(PYTHON) tools/bootstrap.py --venv $(VENV)

demo: setup
	$(PY) -m afa_d2.demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

env: setup
	$(PY) -m afa_d2.env

benchmark: setup
	$(PY) -m afa_d2.tools.benchmark

clean:
	rm -rf $(VENV) .cache .pytest_cache
