# One command each: `make demo` runs the main job on the bundled real corpus, `make test` runs the tests.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# the exact set the tests passed with (`make lock` refreshes it); setup.cfg keeps ranges for library users
LOCK := requirements.lock

.PHONY: demo test test-fast lint docs bench install lock clean

$(STAMP): setup.cfg setup.py pyproject.toml $(LOCK) medscale/hashing/_lanczos.c medscale/hashing/_lanczos_kernel.h medscale/hashing/_lanczos_transpose.h
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) -e ".[test,cloud,gpu,docs]"
	touch $(STAMP)

install: $(STAMP)

# refresh the lock: the newest versions setup.cfg allows, resolved in a scratch venv, then frozen
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip
	.lock-venv/bin/pip install -q -e ".[test,cloud,gpu,docs]"
	.lock-venv/bin/pip freeze --exclude-editable > $(LOCK)
	rm -rf .lock-venv

demo: $(STAMP)
	$(VENV)/bin/medscale demo

lint: $(STAMP)
	$(VENV)/bin/ruff check medscale tests benchmarks
	$(VENV)/bin/mypy medscale/core medscale/trainer

# the documentation site: broken links and pages left out of the nav fail the build
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q

test: lint docs
	$(PY) -m pytest -ra --durations=40

test-fast: lint
	$(PY) -m pytest -ra -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/shard.py
	$(PY) benchmarks/dedup_speed.py
	$(PY) benchmarks/dedup_quality.py
	$(PY) benchmarks/contamination.py
	$(PY) benchmarks/loader.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/eval.py
	$(PY) benchmarks/launch.py
	$(PY) benchmarks/spot.py
	$(PY) benchmarks/scale.py

clean:
	rm -rf $(VENV) outputs .pytest_cache site
