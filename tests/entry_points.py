"""Running the repo's entry points (`python -m experiments.<name>`) from tests."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One CPU device and no simulated ones: the entry points run as a user would run them.
ENV = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")


def run_module(name: str, *args: str, timeout: float):
  """Runs `python -m experiments.<name> args` from the repo root; returns the result."""
  return subprocess.run([sys.executable, "-m", f"experiments.{name}", *args], cwd=REPO,
                        text=True, capture_output=True, timeout=timeout, env=ENV)
