# The two commands of the README. Each sets up .venv on a fresh machine first.
# torch is installed on its own, pinned, before anything can pull a multi-GB CUDA build, and pinned
# again with the rest: pip 26 otherwise replaces the installed CPU build with a newer CUDA one.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup

$(BIN)/hubtree: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]' torch==2.13.0
	touch $(BIN)/hubtree

setup: $(BIN)/hubtree

demo: setup
	$(BIN)/hubtree demo

test: setup
	$(BIN)/python -m pytest -q -ra
