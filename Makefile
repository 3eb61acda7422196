# Two commands on a fresh machine: `make demo` (whole pipeline on the synthetic dataset)
# and `make test`. Both create .venv and install the project into it when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKDIR ?= workdir/synthetic
CONFIG ?= configs/synthetic.py
# One CPU device per process unless the caller says otherwise.
export JAX_PLATFORMS ?= cpu

.PHONY: demo test install clean format

$(BIN)/cows-jax: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,crf]"
	touch $@

install: $(BIN)/cows-jax

demo: install
	$(BIN)/cows-jax pipeline --config $(CONFIG) --workdir $(WORKDIR)
	@cat $(WORKDIR)/reports/summary.json

test: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) workdir

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
