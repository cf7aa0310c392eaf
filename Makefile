# The two commands of the README: `make demo` and `make test`.
# Each runs the setup first (Debian packages, venv, test firmware).

VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo test lint bench firmware install clean

setup:
	@VENV=$(VENV) ./scripts/setup.sh

demo: setup
	@./scripts/demo.sh

test: setup lint
	$(PY) -m pytest -q tests

lint:
	$(VENV)/bin/ruff check rprocd tests

bench: setup
	$(PY) -m tests.bench

install:
	./scripts/install.sh --destdir "$(DESTDIR)"

firmware:
	$(MAKE) -C tests/firmware

clean:
	$(MAKE) -C tests/firmware clean
	rm -rf $(VENV) .pytest_cache
