"""Batches for training and evaluation, from in-memory task arrays (grain, no TensorFlow).

Training batches come from a grain dataset (seeded shuffle, reshuffled every epoch) whose
iterator state is a single index, checkpointed with the model so that a resumed run sees
exactly the batches of an uninterrupted one. Evaluation walks a whole split once, padding
the last batch with examples of weight 0.

Every batch is cut to a bucketed length just above its longest sequence, so short batches
cost less, while the few bucket lengths keep the number of compilations small.
"""

import functools
from typing import Iterator

import grain
import numpy as np

from lra.data import PAD_ID

_MIN_BUCKET = 32


def bucket_length(longest: int, width: int) -> int:
  """Smallest of 32, 48, 64, 96, 128, ... (2^k and 1.5 x 2^k) >= `longest`, capped at width."""
  bucket = _MIN_BUCKET
  while bucket < longest:
    bucket = bucket * 3 // 2 if bucket & (bucket - 1) == 0 else bucket * 4 // 3
  return min(bucket, width)


def trim(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Cuts every token field (`inputs*`) to the bucket of its longest sequence."""
  out = dict(batch)
  for name, tokens in batch.items():
    if name.startswith("inputs"):
      real = tokens != PAD_ID
      longest = int((real.shape[1] - np.argmax(real[:, ::-1], axis=1))[real.any(1)].max(
          initial=1))
      out[name] = tokens[:, :bucket_length(longest, tokens.shape[1])].astype(np.int32)
  return out


def _gather(split: dict[str, np.ndarray], indices: np.ndarray) -> dict[str, np.ndarray]:
  batch = {name: values[indices] for name, values in split.items()}
  batch["weights"] = np.ones(len(indices), np.float32)
  return trim(batch)


def num_examples(split: dict[str, np.ndarray]) -> int:
  return len(split["targets"])


def train_iterator(split: dict[str, np.ndarray], *, batch_size: int,
                   seed: int) -> grain.DatasetIterator:
  """Endless shuffled batches; `get_state`/`set_state` make it resumable."""
  dataset = (grain.MapDataset.range(num_examples(split)).shuffle(seed=seed).repeat(None)
             .batch(batch_size, drop_remainder=True).map(functools.partial(_gather, split)))
  return iter(dataset.to_iter_dataset())


def eval_batches(split: dict[str, np.ndarray], *,
                 batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """One pass over a split in order; the last batch is filled up with weight-0 examples."""
  total = num_examples(split)
  for start in range(0, total, batch_size):
    indices = np.arange(start, start + batch_size)
    real = indices < total
    batch = _gather(split, np.where(real, indices, 0))
    batch["weights"] = real.astype(np.float32)
    yield batch
