# The two commands (README): `make demo` and `make test`. Both set everything up from scratch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HASH := $(shell cat setup.py | md5sum | cut -c1-8)
STAMP := $(VENV)/.installed-$(HASH)
TEST_STAMP := $(VENV)/.installed-test-$(HASH)
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: demo test install lint bench bench-peers pretrained clean

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

# Two pytest-xdist workers, whole files to one worker (module fixtures built once): most tests
# wait on compilations, subprocesses and checkpoint writes, which overlap on two cores.
test: $(TEST_STAMP)
	$(VENV)/bin/ruff check rankt5_jax tests tasks bench
	$(PY) -m pytest -q -n 2 --dist loadfile tests

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check rankt5_jax tests tasks bench
	$(VENV)/bin/ruff format --check rankt5_jax tests tasks bench

bench: $(TEST_STAMP)
	$(PY) bench/score_bench.py

# Rebuilds the shipped tiny pretrained ranker the demo fine-tunes from (rankt5_jax/pretrained/;
# about 9 minutes on 2 cores): pseudo-query pretraining, bench/pretrain_tiny.py.
pretrained: $(STAMP)
	nice -n 5 $(PY) bench/pretrain_tiny.py

# The peer libraries (Lightning IR, pyterrier-t5, rerankers) in their own environment, never part
# of `make test`: torch 2.13.0 CPU (the wheel on these machines) first, so nothing pulls a CUDA
# build; transformers 4 (the peers' T5 code paths as documented, no transformers 5 workarounds).
PEERS := .venv-peers
PEERS_STAMP := $(PEERS)/.installed-peers-1
PEER_PACKAGES := lightning-ir==0.0.6 pyterrier-t5==0.3.0 'rerankers[transformers]==0.10.0' \
	'transformers>=4.50,<5' sentencepiece

$(PEERS_STAMP):
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install -q --upgrade pip setuptools wheel
	$(PEERS)/bin/pip install -q torch==2.13.0
	$(PEERS)/bin/pip install -q torch==2.13.0 $(PEER_PACKAGES)
	touch $(PEERS_STAMP)

# rankt5_jax (this venv) against the peers (.venv-peers, one worker process), interleaved rounds.
bench-peers: $(TEST_STAMP) $(PEERS_STAMP)
	$(PY) bench/peers_bench.py --peers_python $(PEERS)/bin/python

clean:
	rm -rf $(VENV) $(PEERS) demo_output .pytest_cache
