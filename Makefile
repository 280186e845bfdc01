# Two commands for users: `make demo` and `make test`. Both install into .venv first when needed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# tf-agents 0.19.0 pins typing-extensions==4.5.0, gym<=0.23 and pygame, which pip cannot resolve next to
# Ray Serve (fastapi/pydantic need a newer typing-extensions). It runs fine beside them, so it goes in a
# second step without its dependency pins; gin-config and pillow, the dependencies it really imports, go in
# first (installed after it, pip would report its unmet pins as an error).
TF_AGENTS_PKGS := tf-agents==0.19.0 gym==0.23.1
TF_AGENTS_DEPS := gin-config==0.5.0 pillow

.PHONY: install demo test test-quick lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet $(TF_AGENTS_DEPS)
	$(BIN)/python -m pip install --quiet --no-deps $(TF_AGENTS_PKGS)
	touch $(STAMP)

demo: install
	$(BIN)/recbandits demo

test: install
	$(BIN)/python -m pytest tests

# The suite without the end-to-end runs marked slow: a few minutes.
test-quick: install
	$(BIN)/python -m pytest -m "not slow" tests

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benchmarks/env_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
