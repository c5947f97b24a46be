# The two commands (README): `make demo` and `make test`. Both set everything up from scratch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HASH := $(shell cat setup.py | md5sum | cut -c1-8)
STAMP := $(VENV)/.installed-$(HASH)
TEST_STAMP := $(VENV)/.installed-test-$(HASH)
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: demo test install lint bench clean

# The package alone (what the demo needs: no torch, no transformers).
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e .
	touch $(STAMP)

# The package with the test extras (pytest, ruff, torch 2.13.0 CPU, transformers, pytrec_eval).
$(TEST_STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP) $(TEST_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m rankt5_jax.demo --output_dir demo_output

test: $(TEST_STAMP)
	$(VENV)/bin/ruff check rankt5_jax tests tasks bench
	$(PY) -m pytest -q tests

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check rankt5_jax tests tasks bench
	$(VENV)/bin/ruff format --check rankt5_jax tests tasks bench

bench: $(TEST_STAMP)
	$(PY) bench/score_bench.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
