# plug_jax developer commands. `make test` is the README's test command.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed-stamp
# Parallel workers for the default test run (2 on the reference machine).
TEST_WORKERS ?= 2

.PHONY: install demo test test-slow bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade --quiet pip

$(STAMP): setup.py | $(PY)
	$(PIP) install --quiet -e ".[test,convert]"
	touch $(STAMP)

install: $(STAMP)

# Core-library demo on 8 fake CPU devices (see README).
demo: $(STAMP)
	XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu $(PY) -m plug_jax.demo

# Default suite (excludes tests marked `slow`).
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) -q

# Long tests only (large conversions, long decodes).
test-slow: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) -q -m slow || [ $$? -eq 5 ]  # 5: none collected

bench: $(STAMP)
	$(PY) benchmarks/decode_vs_transformers.py

clean:
	rm -rf $(VENV) build *.egg-info
