# The README's two commands: `make demo` and `make test`. Both set up .venv first (idempotent).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean-demo

setup:
	@scripts/setup.sh

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$(CURDIR)/.venv-dvc/bin:$$PATH" $(VENV)/bin/grove demo

test: setup
	PATH="$(CURDIR)/$(VENV)/bin:$(CURDIR)/.venv-dvc/bin:$$PATH" $(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean-demo:
	rm -rf runs/demo
