# make demo: the flow, offline, on the bundled sample.  make test: the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lock bench clean

demo: $(VENV)/.run
	$(PY) prefectflow.py --demo

test: $(VENV)/.dev
	$(PY) -m pytest

$(VENV)/.run: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --require-hashes -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.run requirements-dev.txt
	$(PY) -m pip install --require-hashes -r requirements-dev.txt
	touch $@

# Regenerate the pinned locks from requirements.in and requirements-dev.in.
lock: $(VENV)/.run
	$(PY) -m pip install pip-tools
	$(VENV)/bin/pip-compile --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links \
		requirements.in -o requirements.txt
	$(VENV)/bin/pip-compile --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links \
		requirements-dev.in -o requirements-dev.txt

bench: $(VENV)/.dev
	$(PY) bench/bench.py

clean:
	rm -rf $(VENV) .pytest_cache
