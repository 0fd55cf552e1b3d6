# Placeholder; the full targets (venv, services, moto) are built next.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test
test:
	$(PY) -m pytest
