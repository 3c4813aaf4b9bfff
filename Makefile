# Two commands on a fresh machine: `make run` and `make test`. Each bootstraps .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test services screenshots bench generate clean

$(STAMP): setup.py setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fieldsync run

# ci/services.sh starts PostgreSQL if it is down, creates its `test` database, installs and
# starts ActiveMQ (STOMP) and installs Debian's chromium (the admin UI's browser tests) when
# missing; idempotent, so `make test` is all a fresh machine needs.
# The suite runs on TEST_WORKERS processes (pytest-xdist; one per core by default): tests that
# share something run on one worker, grouped by tests/conftest.py. TEST_WORKERS=0 runs it in
# this process alone.
TEST_WORKERS ?= auto
test: $(STAMP)
	bash ci/services.sh
	$(BIN)/fieldsync generate --check
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=30

services:
	bash ci/services.sh

# The admin UI's pictures in docs/admin/ (docs/admin.md shows them) come from its browser tests;
# `make test` takes them into a temporary directory only, so it never changes the git tree.
screenshots: $(STAMP)
	bash ci/chromium.sh
	FIELDSYNC_TEST_SCREENSHOTS=1 $(BIN)/python -m pytest -q tests/admin/e2e

# Benchmarks print figures (docs/benchmarks.md); they are not tests and `make test` skips them.
bench: $(STAMP)
	@status=0; for bench in bench/*_bench.py; do \
		$(BIN)/python $$bench || status=1; \
	done; exit $$status

generate: $(STAMP)
	$(BIN)/fieldsync generate

clean:
	rm -rf $(VENV) var build *.egg-info platform/*.egg-info
