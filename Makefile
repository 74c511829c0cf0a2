PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-reliability test-peers demo bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,demo]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

# The slow load and fault suites (CI runs them too).
test-reliability: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests/reliability $(ARGS) || test $$? -eq 5  # 5: none collected

# Celery's, OpenTelemetry's and Sentry's own Celery tests, bare and guarded: no new failure.
test-peers: $(STAMP)
	$(BIN)/python tests/peers/run_peer_suites.py $(ARGS)

demo: $(STAMP)
	$(BIN)/python -m telemetry_guard.demo $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check telemetry_guard tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .peers build *.egg-info
