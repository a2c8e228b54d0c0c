# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The accelerator JAX is installed for: cpu (the default), cuda13, cuda12 or tpu, e.g.
# `make test ACCEL=cuda13`. The pinned requirements come first, then jax[$(ACCEL)] of the
# pinned JAX version.
ACCEL ?= cpu
ACCELS := cpu cuda13 cuda12 tpu
$(if $(filter $(ACCEL),$(ACCELS)),,$(error ACCEL must be one of: $(ACCELS); got '$(ACCEL)'))
JAX_VERSION := $(shell sed -n 's/^jax\[cpu\]==//p' requirements.txt)
# One stamp per accelerator, so that a change of ACCEL reinstalls.
STAMP := $(VENV)/.installed-$(ACCEL)
# glibc's malloc on transparent huge pages: XLA:CPU allocates a step's large temporaries
# afresh each step, and first touching them on 4 KB pages costs tens of thousands of page
# faults per step (the small ListOps train step of `make run` runs ~1.6x faster with it).
# Ignored by a glibc older than 2.35 and where transparent huge pages are off.
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: run test test-slow bench bench-gpu clean-venv

# JAX loads every accelerator plugin installed, so those of another ACCEL are removed.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	rm -f $(VENV)/.installed*
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip freeze | sed -n 's/^\(jax-cuda[0-9]*-[a-z]*\|libtpu\)[=@ ].*/\1/p' \
	  | grep -v -e '$(ACCEL)' | xargs -r $(PY) -m pip uninstall --quiet -y
	$(PY) -m pip install --quiet "jax[$(ACCEL)]==$(JAX_VERSION)"
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Trains a small Longformer on generated ListOps on the CPU and prints test accuracy.
run: $(STAMP)
	$(PY) -m experiments.train --config=configs/listops.py:attention=longformer,size=small --workdir=runs/listops_small_longformer

# The test suite without the tests marked `slow` (under 15 minutes on 2 CPU cores).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -n 2 -m slow tests

# Attention forward + backward against length on this machine (docs/benchmarks.md).
bench: $(STAMP)
	$(PY) -m experiments.bench.attention --out=results/bench_attention --rounds=3

# On a GPU (after `make ... ACCEL=cuda13`), in about five minutes, timed on the device: the
# Pallas kernels against cuDNN, FlexAttention, tokamax and the XLA core, and the train step
# of every paper config on the kernels and on the XLA core (docs/kernels.md).
bench-gpu: $(STAMP)
	$(PY) -m experiments.bench.gpu --out=results/bench_gpu

clean-venv:
	rm -rf $(VENV)
