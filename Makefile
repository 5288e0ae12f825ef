# The README's two commands: `make demo` and `make test`. Each sets itself up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast bench lint clean kafka-up kafka-down

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: venv
	$(PY) -m replay.demo --lake ./lake --fresh

test: venv
	$(PY) -m ruff check engine rules replay tests bench
	$(PY) -m pytest -q

bench: venv
	$(PY) bench/bench.py

lint: venv
	$(PY) -m ruff check engine rules replay tests bench

clean:
	rm -rf lake .pytest_cache .ruff_cache
