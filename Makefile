# token-service: every target installs what it needs first, from the lock files.
#   make test   ruff + the whole test suite (real oidc-provider, real HTTP): installs everything
#   make run    the service on embedded defaults + the development identity provider: installs only
#               what running needs (requirements.lock, the project, devidp's oidc-provider)
#   make bench  token-service side by side with its peers: peak, CPU per request, open-loop tail, Redis bytes
#               per family (wrk and nginx: root installs them; bench/openloop.c is built with cc)
#   make lock   re-resolve the lock files after changing pyproject.toml
# requirements.lock pins what the service runs (the container installs only it); requirements-dev.lock
# adds the test and lint tools, resolved with requirements.lock as a constraint, so the pins agree.
# The packages are installed by uv when `$(PYTHON) -m uv` works (several times faster: parallel
# downloads, a shared cache), else by pip; both check every file against the lock's hashes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
UV     := $(shell $(PYTHON) -m uv --version >/dev/null 2>&1 && echo yes)
ifeq ($(UV),yes)
PIP_INSTALL := $(PYTHON) -m uv pip install --quiet --python $(BIN)/python
else
PIP_INSTALL := $(BIN)/pip install --quiet --disable-pip-version-check
endif

.PHONY: install install-run test lint run lock clean bench

install: $(DEV_STAMP) devidp/node_modules/.package-lock.json tests/twilio_spec/node_modules/.package-lock.json

install-run: $(RUN_STAMP) devidp/node_modules/.package-lock.json

$(RUN_STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --require-hashes -r requirements.lock
	$(PIP_INSTALL) --no-deps -e .
	touch $(RUN_STAMP)

$(DEV_STAMP): $(RUN_STAMP) requirements-dev.lock
	$(PIP_INSTALL) --require-hashes -r requirements-dev.lock
	touch $(DEV_STAMP)

devidp/node_modules/.package-lock.json: devidp/package-lock.json
	npm ci --prefix devidp --no-audit --no-fund --loglevel=error

tests/twilio_spec/node_modules/.package-lock.json: tests/twilio_spec/package-lock.json
	npm ci --prefix tests/twilio_spec --no-audit --no-fund --loglevel=error

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest

run: install-run
	@$(BIN)/python dev/run.py

OPENLOOP := build/bench/openloop

$(OPENLOOP): bench/openloop.c
	mkdir -p $(dir $@)
	$${CC:-cc} -O2 -Wall -Wextra -o $@ $<

bench: install $(OPENLOOP)
	$(BIN)/python -m bench.run

lock:
	$(PYTHON) -m pip install --quiet uv
	$(PYTHON) -m uv pip compile pyproject.toml --generate-hashes --python-version 3.11 -o requirements.lock
	$(PYTHON) -m uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
		-c requirements.lock -o requirements-dev.lock

clean:
	rm -rf $(VENV) devidp/node_modules tests/twilio_spec/node_modules .pytest_cache .ruff_cache .dev
