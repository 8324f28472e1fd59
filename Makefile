# plug_jax developer commands. `make test` is the README's test command.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed-stamp
# Parallel workers for the default test run (2 on the reference machine).
TEST_WORKERS ?= 2

.PHONY: install reference-env demo demo-core test test-slow notebooks bench prepare scaling clean
# Where `make demo` trains (kept between runs: a second `make demo` resumes / re-evaluates).
DEMO_DIR ?= runs/shop_tiny
DEMO_GIN := --gin_file=experiments/gpt3/shop_tiny.gin --gin.MODEL_DIR=$(DEMO_DIR)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade --quiet pip

$(STAMP): setup.py | $(PY)
	$(PIP) install --quiet -e ".[test,convert,notebooks,captions]"
	touch $(STAMP)

install: $(STAMP)

# The modelscope package's own classes (the parity references for the ModelScope GPT-3 and
# PALM checkpoints) need transformers 4.x: they get a venv of their own, .venv-reference,
# built once from tests/reference_env/requirements.txt (tests/reference_env/build.py).
reference-env: $(STAMP)
	$(PY) tests/reference_env/build.py

# The main job on the embedded default data (see README): train a tiny Chinese GPT-3 on
# Shop World product text on the CPU, evaluate against a unigram baseline, and print
# continuations of held-out product prompts.
demo: $(STAMP)
	JAX_PLATFORMS=cpu $(VENV)/bin/plug-train $(DEMO_GIN)
	JAX_PLATFORMS=cpu $(VENV)/bin/plug-infer $(DEMO_GIN)
	@echo "demo: checkpoint, config.gin, metrics.jsonl and TensorBoard events are in $(DEMO_DIR);"
	@echo "      look at the curves with: $(VENV)/bin/tensorboard --logdir $(DEMO_DIR)/tensorboard"

# Core-library demo on 8 fake CPU devices: sharding, conversion, decoding.
demo-core: $(STAMP)
	XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu $(PY) -m plug_jax.demo

# Generate the default Shop World TFDS configs into $$PLUG_JAX_CACHE/tfds (done lazily otherwise).
prepare: $(STAMP)
	$(PY) -m plug_jax.data.shop_world_tfds

# Default suite (excludes tests marked `slow`), then the notebooks (`make notebooks`), both
# compiled with the tests' XLA flags (tests/conftest.py; docs/decisions.md "Test compile flags").
TEST_XLA_FLAGS ?= --xla_backend_optimization_level=0
test: $(STAMP) reference-env
	PLUG_JAX_TEST_XLA_FLAGS="$(TEST_XLA_FLAGS)" $(PY) -m pytest -n $(TEST_WORKERS) -q --durations=30
	XLA_FLAGS="$(TEST_XLA_FLAGS)" $(MAKE) --no-print-directory notebooks

# Long tests only (large conversions, long decodes).
test-slow: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) -q -m slow || [ $$? -eq 5 ]  # 5: none collected

# Execute every colabs/*.ipynb top to bottom with tiny runs on the CPU (a few minutes);
# executed copies and their PNG plots go to colabs/executed/ (colabs/README.md).
notebooks: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) colabs/run_notebooks.py

bench: $(STAMP)
	$(PY) benchmarks/decode_vs_transformers.py
	$(PY) benchmarks/train_vs_transformers.py
	$(PY) benchmarks/input_pipeline.py
	$(PY) benchmarks/encdec_decode.py

# docs/scaling.md: plug-plan of every family's plan rows (FamilySpec.plan_rows: GPT-3 13B / 30B / 175B on
# H100 and TPU pods), each compiled for its mesh of fake CPU devices (a few minutes on 2 cores).
scaling: $(STAMP)
	JAX_PLATFORMS=cpu $(VENV)/bin/plug-plan --table > docs/scaling.md.tmp
	mv docs/scaling.md.tmp docs/scaling.md

clean:
	rm -rf $(VENV) .venv-reference .venv-reference.lock build *.egg-info
