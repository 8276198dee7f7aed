# offers-workers — the two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The lock: every package the venv gets, each pinned with its hashes (Python 3.11, Linux x86_64), from
# pyproject.toml's dependencies and extras; RUNTIME_LOCK is the same pins for the dependencies alone (a
# worker image). `make lock` writes both again, with uv from a venv of its own under TOOLS.
LOCK := requirements/dev.lock
RUNTIME_LOCK := requirements/runtime.lock
TOOLS := .offers-workers/tools
UV_VERSION := 0.13.10
UV := $(TOOLS)/uv-$(UV_VERSION)/bin/uv
PIP_AUDIT_VERSION := 2.10.1
LOCK_FLAGS := --quiet --generate-hashes --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	--custom-compile-command "make lock"
# LOCK_ARGS passes options to uv, e.g. LOCK_ARGS=--upgrade (every pin to the newest pyproject admits)
# or LOCK_ARGS="--upgrade-package NAME"; without, `make lock` keeps every pin pyproject still admits.
LOCK_ARGS ?=
# The vulnerability service `make audit` asks: pypi (PyPI's JSON API) or osv.
AUDIT_SERVICE ?= pypi

.PHONY: install lock audit demo test lint unit fuzz bench-audit bench-ceilings bench-pgbouncer bench-tracing clean

install: $(STAMP)

# Exactly the lock's pins (pip checks every hash), then the project itself without resolving anything:
# the pip `python3 -m venv` ships installs it as it is.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

## Write the locks again from pyproject.toml (docs/development.md, "Dependencies and the lock").
lock: $(UV)
	$(UV) pip compile pyproject.toml --extra dev $(LOCK_FLAGS) $(LOCK_ARGS) -o $(LOCK)
	$(UV) pip compile pyproject.toml -c $(LOCK) $(LOCK_FLAGS) -o $(RUNTIME_LOCK)

$(UV):
	$(PYTHON) -m venv $(TOOLS)/uv-$(UV_VERSION)
	$(TOOLS)/uv-$(UV_VERSION)/bin/python -m pip install --quiet uv==$(UV_VERSION)

## The lock's pins against a vulnerability service with pip-audit (needs the service reachable; says
## so in one line and exits 2 where it is not, 1 on a known vulnerability).
audit:
	@$(PYTHON) -m offers_workers.local.dependency_audit --lock $(LOCK) --service $(AUDIT_SERVICE) \
		--tools $(TOOLS) --pip-audit-version $(PIP_AUDIT_VERSION)

## Start everything (embedded Postgres/Redis when no URLs are set), push 200 sample offers, report.
demo: install
	$(BIN)/offers-workers demo --offers 200

## The gate, then the whole suite (uses OFFERS_DATABASE_URL / OFFERS_BROKER_URL when set, else embedded servers).
## Test files run in TEST_WORKERS processes, each with a database, Redis databases and fleets of its own.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

## Lint and import order, formatting, types (configured in pyproject.toml).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: install
	$(BIN)/python -m pytest tests/unit

## The long fuzzing run of intake (not in CI): OFFERS_FUZZ_EXAMPLES examples per property.
fuzz: install
	OFFERS_FUZZ_EXAMPLES=$${OFFERS_FUZZ_EXAMPLES:-10000} $(BIN)/python -m pytest tests/security/test_payload_fuzz.py -p no:logging -q

## The audit path's transactions/s, locked chain trigger against now, on a private cluster (needs pgbench).
## BENCH_ARGS passes options, e.g. BENCH_ARGS="--quick" or "--seconds 30 --json".
bench-audit: install
	@$(BIN)/python -m offers_workers.local.audit_bench $(BENCH_ARGS)

## The scale model's inputs (docs/operations.md, section 8): CPU, transactions and Redis commands per
## offer from one bench run on private stores, and the Redis and RabbitMQ ceilings (about 5 minutes).
bench-ceilings: install
	@$(BIN)/python -m offers_workers.local.ceilings $(BENCH_ARGS)

## offers-workers bench twice on the Postgres of OFFERS_DATABASE_URL: directly, then through a private
## PgBouncer in transaction mode (needs pgbouncer). BENCH_ARGS as above, e.g. "--offers 1000 --memory-offers 0".
bench-pgbouncer: install
	$(BIN)/offers-workers bench $(BENCH_ARGS)
	$(BIN)/python -m offers_workers.local.pgbouncer $(BIN)/offers-workers bench $(BENCH_ARGS)

## offers-workers bench with tracing off, then on (OTLP/HTTP to a local sink that counts the spans).
## BENCH_ARGS as above.
bench-tracing: install
	env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT $(BIN)/offers-workers bench $(BENCH_ARGS)
	$(BIN)/python -m offers_workers.local.otlp_sink $(BIN)/offers-workers bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .offers-workers .pytest_cache
