#!/usr/bin/env bash
# Downloads into .whl/ (ignored by git) the wheels that a GPU machine without a package
# registry lacks to run `python3 -m experiments.bench.gpu`: Python 3.12, x86-64, holding jax,
# flax, optax, chex, orbax, torch and triton already. grain and ml_collections at the versions
# of requirements.txt, tokamax for its rows (xprof: tokamax imports it), and the packages of
# theirs such a machine lacks.
# Install them there with
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
# and run with PYTHONPATH=/tmp/site (docs/kernels.md, "Measuring on a GPU").
set -euo pipefail
cd "$(dirname "$0")/../.."

pinned() { sed -n "s/^$1==//p" requirements.txt; }
wheels=(
  "grain==$(pinned grain)" array-record==0.8.6 portpicker==1.6.0
  "ml_collections==$(pinned ml_collections)"
  tokamax==0.0.17 einshape==1.0 immutabledict==4.3.1 qwix==0.1.8 pydantic==2.14.4
  pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0 xprof==2.23.1
)
rm -rf .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${wheels[@]}"
ls .whl
