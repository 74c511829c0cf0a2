PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

demo: $(STAMP)
	$(BIN)/python -m telemetry_guard.demo $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check telemetry_guard tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
