# Developer entry points: `make demo` (OCR of a bundled page) and `make test` (the full suite).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_VERSION := 2.13.0
PG_VERSION = $(shell ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)

.PHONY: demo test services venv venv-dev

# Stamp files record which install ran, so a second `make` installs nothing. torch goes first and
# pinned because an unpinned resolve would pull a multi-GB CUDA build.
$(VENV)/.stamp-base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==$(TORCH_VERSION)
	$(PIP) install -e .
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-base
	$(PIP) install -e '.[dev]'
	touch $@

venv: $(VENV)/.stamp-base

venv-dev: $(VENV)/.stamp-dev

demo: venv
	$(VENV)/bin/ocrq run --sample

# Start the local PostgreSQL and Redis when they are installed but stopped.
services:
	@if command -v pg_ctlcluster >/dev/null && [ -n "$(PG_VERSION)" ]; then \
	  pg_isready -q -h 127.0.0.1 -p 5432 || \
	    pg_ctlcluster --skip-systemctl-redirect $(PG_VERSION) main start; \
	else echo "PostgreSQL is not installed; its tests will be skipped (or fail when CI=true)"; fi
	@if command -v redis-server >/dev/null; then \
	  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || { \
	    mkdir -p /var/lib/redis /var/log/redis; \
	    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
	      --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log; }; \
	else echo "Redis is not installed; its tests will be skipped (or fail when CI=true)"; fi

test: venv-dev services
	$(PY) -m pytest
