# token-service: every target installs what it needs first, from the lock files.
#   make test   ruff + the whole test suite (real oidc-provider, real HTTP)
#   make run    the service on embedded defaults + the development identity provider
#   make bench  req/s of /v1/token and /v1/token/refresh vs a bare Flask baseline (wrk; root installs it)
#   make lock   re-resolve the lock files after changing pyproject.toml
# requirements.lock pins what the service runs (the container installs only it); requirements-dev.lock
# adds the test and lint tools, resolved with requirements.lock as a constraint, so the pins agree.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test lint run lock clean bench

install: $(STAMP) devidp/node_modules/.package-lock.json tests/twilio_spec/node_modules/.package-lock.json

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

devidp/node_modules/.package-lock.json: devidp/package-lock.json
	npm ci --prefix devidp --no-audit --no-fund --loglevel=error

tests/twilio_spec/node_modules/.package-lock.json: tests/twilio_spec/package-lock.json
	npm ci --prefix tests/twilio_spec --no-audit --no-fund --loglevel=error

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest

run: install
	$(BIN)/python dev/run.py

bench: install
	$(BIN)/python -m bench.run

lock:
	$(PYTHON) -m pip install --quiet uv
	$(PYTHON) -m uv pip compile pyproject.toml --generate-hashes --python-version 3.11 -o requirements.lock
	$(PYTHON) -m uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
		-c requirements.lock -o requirements-dev.lock

clean:
	rm -rf $(VENV) devidp/node_modules tests/twilio_spec/node_modules .pytest_cache .ruff_cache .dev
