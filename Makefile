# Two commands on a fresh machine: `make demo` (whole pipeline on the synthetic dataset)
# and `make test`. Both create .venv and install the project into it when needed.
# On a GPU box, `make install EXTRAS=cuda12` once: `make demo` then runs on the GPU.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKDIR ?= workdir/synthetic
CONFIG ?= configs/synthetic.py
# Extras installed on top of test and crf, comma-separated: cuda12, tpu, gcs (pyproject.toml).
EXTRAS ?=

.PHONY: demo test install clean format

$(BIN)/cows-jax: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo 'cows_jax needs Python >= 3.11: make PYTHON=python3.11 ...'; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,crf]"
	touch $@

install: $(BIN)/cows-jax
ifneq ($(strip $(EXTRAS)),)
	$(BIN)/pip install --quiet -e ".[$(strip $(EXTRAS))]"
endif

# JAX picks the accelerator when its plugin is installed (EXTRAS=cuda12 or tpu), else the CPU.
demo: install
	$(BIN)/cows-jax pipeline --config $(CONFIG) --workdir $(WORKDIR)
	@cat $(WORKDIR)/reports/summary.json

# The tests run on the CPU, whatever the machine has, unless the caller sets JAX_PLATFORMS,
# on TEST_WORKERS pytest-xdist workers (each holds a few GiB: more than 2 only with the memory).
TEST_WORKERS ?= 2
test: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	JAX_PLATFORMS=$(or $(JAX_PLATFORMS),cpu) $(BIN)/python -m pytest tests --durations=15 \
	  -n $(TEST_WORKERS) --dist loadgroup

clean:
	rm -rf $(VENV) workdir

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
