"""Triton launch settings of the GPU kernels, read from a table the benchmark writes.

`gpu_launch.json` (beside this file) maps a GPU's device kind (`jax.Device.device_kind`,
e.g. "NVIDIA H100 80GB HBM3") to the settings of each kernel, `forward`, `d_query` and
`d_key_value`: `num_warps` and `num_stages`. `default` holds those of any other GPU and of
programs lowered where no GPU is attached (`jax.export` for `cuda`). The table is read when a
call is traced; `python -m experiments.bench.gpu --sweep_launch` measures the settings on a
GPU and writes its device kind's entry.
"""

import contextlib
import dataclasses
import functools
import json
import os

import jax

TABLE = os.path.join(os.path.dirname(__file__), "gpu_launch.json")
KERNELS = ("forward", "d_query", "d_key_value")


@dataclasses.dataclass(frozen=True)
class Settings:
  num_warps: int
  num_stages: int


# Settings of the kernels named, for calls traced inside `overridden` (a benchmark's sweep).
_OVERRIDES: dict = {}


@functools.cache
def _read(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def device_kind() -> str:
  """The device kind of the first GPU, or "default" where none is attached."""
  try:
    return jax.devices("gpu")[0].device_kind
  except RuntimeError:
    return "default"


@contextlib.contextmanager
def overridden(settings_by_kernel: dict[str, Settings]):
  """Calls traced inside the block launch the kernels named with these settings."""
  saved = dict(_OVERRIDES)
  _OVERRIDES.update(settings_by_kernel)
  try:
    yield
  finally:
    _OVERRIDES.clear()
    _OVERRIDES.update(saved)


def settings(kernel: str, kind: str | None = None) -> Settings:
  """The launch settings of `kernel` on GPUs of `kind` (default: the attached one)."""
  if kernel in _OVERRIDES:
    return _OVERRIDES[kernel]
  table = _read(TABLE)
  entry = table.get(device_kind() if kind is None else kind, {})
  return Settings(**{**table["default"][kernel], **entry.get(kernel, {})})
