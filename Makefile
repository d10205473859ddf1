# make demo: the flow, offline, on the bundled sample.  make test: the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# make test runs the suite in this many processes (pytest-xdist); plain pytest runs it in one.
TEST_WORKERS ?= 4

.PHONY: demo test lock bench clean

demo: $(VENV)/.run
	$(PY) prefectflow.py --demo

test: $(VENV)/.dev
	$(PY) -m pytest -n $(TEST_WORKERS)

# The build lock goes in first: pendulum 2.1.2 is built from source with it (see requirements-build.in).
$(VENV)/.run: requirements-build.txt requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --require-hashes -r requirements-build.txt
	$(PY) -m pip install --require-hashes --no-build-isolation -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.run requirements-dev.txt
	$(PY) -m pip install --require-hashes -r requirements-dev.txt
	touch $@

# Regenerate the pinned locks from the .in files, with the oldest supported Python
# (make lock PYTHON=python3.11 on a fresh .venv): what it resolves also installs on newer ones.
lock: $(VENV)/.run
	$(PY) -m pip install pip-tools
	$(VENV)/bin/pip-compile --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
		requirements-build.in -o requirements-build.txt
	$(VENV)/bin/pip-compile --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links \
		requirements.in -o requirements.txt
	$(VENV)/bin/pip-compile --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links \
		requirements-dev.in -o requirements-dev.txt

bench: $(VENV)/.dev
	$(PY) bench/bench.py

clean:
	rm -rf $(VENV) .pytest_cache
