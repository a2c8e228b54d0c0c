"""Training batches: every example once per epoch, grouped by length, resumable."""

import numpy as np
import pytest

from lra import input_pipeline
from lra.data import PAD_ID

_BATCH, _POOL = 4, 4


def _split(num_examples=64, max_length=40, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, max_length + 1, num_examples)
  inputs = np.full((num_examples, max_length), PAD_ID, np.uint16)
  for row, length in enumerate(lengths):
    inputs[row, :length] = rng.integers(1, 16, length)
  # The target is the example id, so batches say which examples they hold.
  return {"inputs": inputs, "targets": np.arange(num_examples, dtype=np.int32)}, lengths


def _batches(split, count, seed=0):
  iterator = input_pipeline.train_iterator(split, batch_size=_BATCH, seed=seed,
                                           pool_batches=_POOL)
  return [next(iterator) for _ in range(count)]


def test_each_epoch_holds_every_example_once():
  split, _ = _split()
  per_epoch = 64 // _BATCH
  batches = _batches(split, 2 * per_epoch)
  for epoch in range(2):
    ids = np.concatenate([b["targets"] for b in batches[epoch * per_epoch:][:per_epoch]])
    np.testing.assert_array_equal(np.sort(ids), np.arange(64))
  first, second = (np.concatenate([b["targets"] for b in batches[e * per_epoch:][:per_epoch]])
                   for e in range(2))
  assert not np.array_equal(first, second), "epochs should be reshuffled"


def test_batches_of_a_pool_partition_it_by_length():
  split, lengths = _split()
  for pool in range(64 // (_BATCH * _POOL)):
    batches = _batches(split, (pool + 1) * _POOL)[pool * _POOL:]
    spans = sorted((lengths[b["targets"]].min(), lengths[b["targets"]].max()) for b in batches)
    # Sorted by their shortest example, each batch starts where the previous one ended.
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:])), spans


def test_batches_are_cut_to_the_bucket_of_their_longest_example():
  split, lengths = _split()
  for batch in _batches(split, 16):
    longest = lengths[batch["targets"]].max()
    assert batch["inputs"].shape[1] == input_pipeline.bucket_length(longest, 40)
    np.testing.assert_array_equal(batch["weights"], 1.0)


def test_same_seed_same_batches_and_resume_from_state():
  split, _ = _split()
  iterator = input_pipeline.train_iterator(split, batch_size=_BATCH, seed=3, pool_batches=_POOL)
  for _ in range(7):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator)["targets"] for _ in range(5)]
  resumed = input_pipeline.train_iterator(split, batch_size=_BATCH, seed=3, pool_batches=_POOL)
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["targets"], want)
  other_seed = [b["targets"] for b in _batches(split, 12, seed=4)][7:]
  assert any(not np.array_equal(a, b) for a, b in zip(expected, other_seed))


@pytest.mark.parametrize("count", [2, 4])
def test_the_shards_of_processes_make_up_the_whole_batch(count):
  # Each process makes only its rows, cut to the bucket of the whole batch's longest.
  split, _ = _split()
  shards = [input_pipeline.Shard(index, count) for index in range(count)]

  def assert_whole(whole, parts):
    for name, values in whole.items():
      np.testing.assert_array_equal(np.concatenate([part[name] for part in parts]), values)

  whole = input_pipeline.train_iterator(split, batch_size=_BATCH, seed=3, pool_batches=_POOL)
  parts = [input_pipeline.train_iterator(split, batch_size=_BATCH, seed=3, pool_batches=_POOL,
                                         shard=shard) for shard in shards]
  for _ in range(2 * _POOL):
    assert_whole(next(whole), [next(part) for part in parts])
  evaluation = zip(input_pipeline.eval_batches(split, batch_size=12),
                   *[input_pipeline.eval_batches(split, batch_size=12, shard=shard)
                     for shard in shards])
  for whole_batch, *part_batches in evaluation:
    assert_whole(whole_batch, part_batches)
