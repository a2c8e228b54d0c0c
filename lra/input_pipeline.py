"""Batches for training and evaluation, from in-memory task arrays (grain, no TensorFlow).

Training batches come from a grain dataset (seeded shuffle, reshuffled every epoch) whose
iterator state is a single index, checkpointed with the model so that a resumed run sees
exactly the batches of an uninterrupted one. Evaluation walks a whole split once, padding
the last batch with examples of weight 0.

Every batch is cut to a bucketed length just above its longest sequence, so short batches
cost less, while the few bucket lengths keep the number of compilations small. Training
batches are also grouped by length: each pool of `POOL_BATCHES` shuffled batches is sorted by
length, cut into batches, and those are visited in a seeded random order. Without it a batch
of random lengths is nearly always as long as the longest example (ListOps: 512 tokens
where the mean is 290).

With several processes (`lra.distributed`), each one makes only its `Shard` of every global
batch: its run of rows, cut to the bucket of the whole batch's longest sequence (known from
the lengths of the split, not from the other rows), so that every process cuts alike and
the shards assemble into one global batch.
"""

import dataclasses
import functools
from typing import Iterator

import grain
import numpy as np

from lra.tokens import PAD_ID

_MIN_BUCKET = 32
# Batches drawn together and grouped by length; 1 would be a plain shuffle.
POOL_BATCHES = 16
# How training batches are read ahead: one thread, a few batches. A batch takes
# milliseconds to make, far less than a step; grain's default (16 threads reading 500
# batches ahead) keeps both cores of a small machine busy long after the run starts
# (measured: 9 CPU seconds in 5 idle seconds with 22 examples, 2 with 2000).
READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=8)


def bucket_length(longest: int, width: int) -> int:
  """Smallest of 32, 48, 64, 96, 128, ... (2^k and 1.5 x 2^k) >= `longest`, capped at width."""
  bucket = _MIN_BUCKET
  while bucket < longest:
    bucket = bucket * 3 // 2 if bucket & (bucket - 1) == 0 else bucket * 4 // 3
  return min(bucket, width)


@dataclasses.dataclass(frozen=True)
class Shard:
  """The rows of every global batch that one process makes: run `index` of `count` equal
  runs (`lra.sharding.process_shard` finds a process's run on the mesh)."""

  index: int = 0
  count: int = 1

  def rows(self, batch_size: int) -> slice:
    size = batch_size // self.count
    return slice(self.index * size, (self.index + 1) * size)

  def of(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This shard's rows of a whole batch."""
    return {name: values[self.rows(len(values))] for name, values in batch.items()}


WHOLE = Shard()  # the one process's: every row


# Per-token fields of packed rows (`lra.pretraining.pack`), cut with `inputs`.
PACKED_FIELDS = ("segment_ids", "positions")


def token_ends(split: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Per token field (`inputs*`), the end of each example's last real token `[examples]`
  (0 for an example without one)."""
  ends = {}
  for name, tokens in split.items():
    if name.startswith("inputs"):
      real = tokens != PAD_ID
      ends[name] = np.where(real.any(1), real.shape[1] - np.argmax(real[:, ::-1], axis=1), 0)
  return ends


def trim(batch: dict[str, np.ndarray], longest: dict[str, int]) -> dict[str, np.ndarray]:
  """Cuts every token field (`inputs*`, and the fields of packed rows with `inputs`) to the
  bucket of `longest[field]`, the end of the longest sequence of the whole global batch."""
  out = dict(batch)
  for name, tokens in batch.items():
    if name.startswith("inputs"):
      bucket = bucket_length(longest[name], tokens.shape[1])
      out[name] = tokens[:, :bucket].astype(np.int32)
      if name == "inputs":
        out.update((field, batch[field][:, :bucket]) for field in PACKED_FIELDS
                   if field in batch)
  return out


def _gather(split: dict[str, np.ndarray], ends: dict[str, np.ndarray], indices: np.ndarray,
            shard: Shard) -> dict[str, np.ndarray]:
  """`shard`'s rows of the batch of examples `indices` (`ends`: the split's `token_ends`)."""
  local = indices[shard.rows(len(indices))]
  batch = {name: values[local] for name, values in split.items()}
  batch["weights"] = np.ones(len(local), np.float32)
  return trim(batch, {name: int(end[indices].max(initial=1)) for name, end in ends.items()})


def num_examples(split: dict[str, np.ndarray]) -> int:
  return len(next(iter(split.values())))


def _lengths(split: dict[str, np.ndarray]) -> np.ndarray:
  """Real tokens of each example `[examples]` (the longer document of a pair)."""
  fields = [values for name, values in split.items() if name.startswith("inputs")]
  return np.max([np.sum(tokens != PAD_ID, axis=1) for tokens in fields], axis=0)


def train_iterator(split: dict[str, np.ndarray], *, batch_size: int, seed: int,
                   pool_batches: int = POOL_BATCHES,
                   shard: Shard = WHOLE) -> grain.DatasetIterator:
  """Endless shuffled, length-grouped batches; `get_state`/`set_state` make it resumable.

  Every epoch is reshuffled. Batch `b` is a pure function of (seed, b), so the iterator
  state is one index (the same in every process: `shard` picks the rows of each batch).
  """
  return iter(train_dataset(split, batch_size=batch_size, seed=seed, pool_batches=pool_batches,
                            shard=shard).to_iter_dataset(READ_OPTIONS))


def train_dataset(split: dict[str, np.ndarray], *, batch_size: int, seed: int,
                  pool_batches: int = POOL_BATCHES, shard: Shard = WHOLE) -> grain.MapDataset:
  """The batches of `train_iterator` as a `grain.MapDataset` (batch `b` at index `b`)."""
  # Example ids in a new random order every epoch; a pool is `pool_size` consecutive ones.
  order = grain.MapDataset.range(num_examples(split)).shuffle(seed=seed).repeat(None)
  lengths, ends = _lengths(split), token_ends(split)
  pool_size = batch_size * pool_batches

  @functools.lru_cache(maxsize=1)
  def pool(index: int) -> np.ndarray:
    """The batches of one pool, shortest first, in a seeded order `[pool_batches, batch]`."""
    ids = np.array([order[index * pool_size + k] for k in range(pool_size)])
    by_length = ids[np.argsort(lengths[ids], kind="stable")].reshape(pool_batches, batch_size)
    return by_length[np.random.default_rng([seed, index]).permutation(pool_batches)]

  def batch(b: int) -> dict[str, np.ndarray]:
    return _gather(split, ends, pool(b // pool_batches)[b % pool_batches], shard)

  return grain.MapDataset.range(len(order) // pool_size * pool_batches).map(batch)


def eval_batches(split: dict[str, np.ndarray], *, batch_size: int,
                 shard: Shard = WHOLE) -> Iterator[dict[str, np.ndarray]]:
  """One pass over a split in order (`shard`'s rows of each batch); the last batch is filled
  up with weight-0 examples."""
  total, ends = num_examples(split), token_ends(split)
  for start in range(0, total, batch_size):
    indices = np.arange(start, start + batch_size)
    real = indices < total
    batch = _gather(split, ends, np.where(real, indices, 0), shard)
    batch["weights"] = real[shard.rows(batch_size)].astype(np.float32)
    yield batch
