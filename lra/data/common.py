"""Helpers shared by the task loaders: vocabularies, padding, splits, errors, atomic writes,
and `CLASSIFICATION`, the `TASK` of every classification task.

Byte and pixel tasks share one token layout: a value `v` in 0..255 (a byte of UTF-8 text or
a grey level) is token `v + 1`, so `PAD_ID = 0` never collides with a real value (the
original LRA code fed pixel 0 as token 0 and masked black pixels out as padding). Their
vocabularies have 257 entries and token arrays are `TOKEN_DTYPE`.
"""

import contextlib
import os
import shutil
import tempfile
from typing import Iterator, Sequence

import numpy as np

from lra import errors
from lra import input_pipeline
from lra import data as lra_data
from lra.data import PAD_ID

# 257 ids fit in 16 bits; half the memory of int32 matters for Path-X (160k x 16384 tokens in
# train) and AAN (2 x 147k x 4000).
TOKEN_DTYPE = np.uint16

# Printable stand-ins for bytes that have no visible glyph of their own.
_BYTE_NAMES = {ord(" "): "<space>", ord("\t"): "<tab>", ord("\n"): "<newline>"}


def byte_vocab() -> list[str]:
  """Returns the 257 token names of byte-level text: '<pad>', then one per byte value."""
  names = []
  for value in range(256):
    if value in _BYTE_NAMES:
      names.append(_BYTE_NAMES[value])
    elif 0x21 <= value <= 0x7E:
      names.append(chr(value))
    else:
      names.append(f"<0x{value:02X}>")
  return ["<pad>"] + names


def pixel_vocab() -> list[str]:
  """Returns the 257 token names of grey-level images: '<pad>', then '0' .. '255'."""
  return ["<pad>"] + [str(value) for value in range(256)]


def bytes_to_tokens(data: bytes, max_length: int) -> np.ndarray:
  """Returns the tokens `byte + 1` of the first `max_length` bytes of `data`."""
  values = np.frombuffer(data[:max_length], dtype=np.uint8)
  return values.astype(TOKEN_DTYPE) + 1


def pixels_to_tokens(pixels: np.ndarray) -> np.ndarray:
  """Returns the tokens `pixel + 1` of a uint8 array, with its shape."""
  return pixels.astype(TOKEN_DTYPE) + 1


def pad_sequences(sequences: Sequence[np.ndarray], length: int | None = None) -> np.ndarray:
  """Stacks 1-D token arrays into `[num, length]`, right-padded with `PAD_ID`.

  Args:
    sequences: token arrays of any lengths up to `length`.
    length: row length; the longest sequence (at least 1) when None.

  Returns:
    A `TOKEN_DTYPE` array.
  """
  if length is None:
    length = max([len(s) for s in sequences] + [1])
  out = np.full((len(sequences), length), PAD_ID, dtype=TOKEN_DTYPE)
  for row, tokens in zip(out, sequences):
    row[:len(tokens)] = tokens
  return out


def option(config, name: str, default):
  """Returns `config.data.<name>`, or `default` when the config does not set it."""
  data = config.get("data")
  return default if data is None else data.get(name, default)


def seeded_split(num_examples: int, held_out_fractions: Sequence[float],
                 seed: int) -> list[np.ndarray]:
  """Splits `range(num_examples)` by a seeded permutation.

  Args:
    num_examples: number of examples to split.
    held_out_fractions: fraction of the examples in each held-out part, e.g. `(0.1, 0.1)`;
      each part gets `round(fraction * num_examples)` examples.
    seed: permutation seed; the same seed gives the same parts.

  Returns:
    `[rest, *held_out]` index arrays, in the permutation's order.
  """
  if any(not 0 <= f < 1 for f in held_out_fractions) or sum(held_out_fractions) >= 1:
    raise errors.ConfigError(
        f"held-out fractions must each be in [0, 1) and sum to less than 1, got "
        f"{list(held_out_fractions)}")
  order = np.random.default_rng(seed).permutation(num_examples)
  counts = [round(f * num_examples) for f in held_out_fractions]
  held_out, start = [], num_examples - sum(counts)
  for count in counts:
    held_out.append(order[start:start + count])
    start += count
  return [order[:num_examples - sum(counts)]] + held_out


def parse_binary_label(text: str, where: str) -> int:
  """Parses a 0/1 class label written as an int or a float ('1', '1.0').

  Args:
    text: the field as read.
    where: file and line for the error message.

  Returns:
    0 or 1.
  """
  try:
    value = float(text)
  except ValueError:
    value = None
  if value not in (0.0, 1.0):
    raise errors.DataError(f"{where}: expected a label 0 or 1, got {text!r}")
  return int(value)


def missing_data_error(path, expected: str, source: str) -> errors.DataError:
  """Returns the error for data that is absent at `path` (None: `config.data_path` unset).

  Args:
    path: the folder or file looked for, or None.
    expected: what should be there and in which format.
    source: where the dataset is published and what to do with it.
  """
  where = "config.data_path is not set" if path is None else f"{path} does not exist"
  return errors.DataError(f"{where}; expected {expected}. {source}")


def require_dir(path, expected: str, source: str) -> str:
  """Returns `path` as a str if it is an existing folder, else raises `DataError`."""
  if path is None or not os.path.isdir(path):
    raise missing_data_error(path, expected, source)
  return os.fspath(path)


def require_file(path, expected: str, source: str) -> str:
  """Returns `path` as a str if it is an existing file, else raises `DataError`."""
  if not os.path.isfile(path):
    raise missing_data_error(path, expected, source)
  return os.fspath(path)


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
  """Yields a temporary folder that becomes `path` only once the block has succeeded.

  Readers therefore never see a half-written `path`. The temporary folder sits next to
  `path` (same filesystem, so the final rename is atomic) and is removed on failure. If
  another process created `path` meanwhile, its copy is kept and ours is dropped.
  """
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
  try:
    yield scratch
    try:
      os.rename(scratch, path)
    except OSError:
      if not os.path.isdir(path):
        raise
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def _classification_pipelines(config, data: lra_data.TaskData,
                              shard=input_pipeline.WHOLE) -> lra_data.Pipelines:
  """Shuffled, length-grouped training batches of examples; evaluation in order."""
  targets = data.splits["test"].get("targets")
  majority = (float(np.bincount(targets).max() / len(targets))
              if targets is not None and len(targets) else None)
  return lra_data.Pipelines(
      train=input_pipeline.train_iterator(data.splits["train"], batch_size=config.batch_size,
                                          seed=config.seed, shard=shard),
      evaluation=lambda split, phase: input_pipeline.eval_batches(
          data.splits[split], batch_size=config.eval_batch_size, shard=shard),
      baseline=majority)


# Classification (ListOps, Text, Retrieval, Image, Pathfinder): one phase, accuracy picks the
# best checkpoint, and the majority class's share of the test split is the baseline.
CLASSIFICATION = lra_data.Task(
    phases=lra_data.single_phase,
    pipelines=_classification_pipelines,
    metrics=lra_data.Metrics(averages={"loss": "loss", "correct": "accuracy"},
                             selection="accuracy", higher_is_better=True,
                             baseline="majority_class_rate", baseline_label="majority class"))
