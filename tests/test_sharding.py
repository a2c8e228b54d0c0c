"""The device mesh of `config.mesh` and the batches placed on it (4 simulated CPU devices,
tests/conftest.py); the trainer on such meshes: tests/test_train_mesh.py."""

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lra import errors
from lra import input_pipeline
from lra import sharding


def config_of(mesh: dict, attention: str = "local") -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "mesh": mesh, "attention": {"name": attention, "window": 2, "sequence_axis": None}})


@pytest.mark.parametrize("mesh, shape", [
    ({"data": -1, "sequence": 1}, {"data": 4, "sequence": 1}),
    ({"data": 2, "sequence": -1}, {"data": 2, "sequence": 2}),
    ({"data": 1, "sequence": 2}, {"data": 1, "sequence": 2}),  # the first 2 devices
    ({}, {"data": 1, "sequence": 1}),
])
def test_mesh_shapes(mesh, shape):
  assert dict(sharding.make_mesh(config_of(mesh)).shape) == shape


@pytest.mark.parametrize("mesh, message", [
    ({"data": 3, "sequence": -1}, "do not divide by 3"),
    ({"data": 4, "sequence": 2}, "asks for 8 devices; there are 4"),
    ({"data": -1, "sequence": -1}, "at most one -1"),
])
def test_bad_meshes_are_named(mesh, message):
  with pytest.raises(errors.ConfigError, match=message):
    sharding.make_mesh(config_of(mesh))


def test_batches_split_examples_over_data_and_lengths_over_sequence():
  mesh = sharding.make_mesh(config_of({"data": 2, "sequence": 2}))
  batch = {"inputs": np.arange(4 * 64).reshape(4, 64), "targets": np.arange(4),
           "odd": np.zeros((4, 33))}
  placed = sharding.batch_placement(mesh)(batch)
  assert placed["inputs"].sharding.spec == P("data", "sequence")
  assert {shard.data.shape for shard in placed["inputs"].addressable_shards} == {(2, 32)}
  assert placed["targets"].sharding.spec == P("data")
  assert placed["odd"].sharding.spec == P("data")  # a length that does not divide: whole
  np.testing.assert_array_equal(jax.device_get(placed["inputs"]), batch["inputs"])
  unsplit = sharding.make_mesh(config_of({"data": 4, "sequence": 1}))
  assert sharding.batch_placement(unsplit)(batch)["inputs"].sharding.spec == P("data")


def test_batch_sizes_must_divide_over_data():
  mesh = sharding.make_mesh(config_of({"data": 4, "sequence": 1}))
  sharding.check_batch_sizes({"batch_size": 8, "phases.batch_size[1]": 4}, mesh)
  with pytest.raises(errors.ConfigError, match="phases.batch_size.1.=6 does not divide over"):
    sharding.check_batch_sizes({"batch_size": 8, "phases.batch_size[1]": 6}, mesh)


def test_only_attention_that_can_split_the_length_splits_it():
  split = sharding.make_mesh(config_of({"data": 1, "sequence": 2}))
  config = config_of({"data": 1, "sequence": 2})
  assert sharding.split_over_sequence(config, split).attention.sequence_axis == "sequence"
  assert config.attention.sequence_axis is None  # a copy
  unsplit = sharding.make_mesh(config_of({"data": 4, "sequence": 1}))
  assert sharding.split_over_sequence(config, unsplit) is config
  with pytest.raises(errors.ConfigError, match="'full' attention cannot attend over"):
    sharding.split_over_sequence(config_of({}, attention="full"), split)


def test_a_batch_that_does_not_divide_over_the_processes_is_named(monkeypatch):
  mesh = sharding.make_mesh(config_of({"data": 1, "sequence": 1}))
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  with pytest.raises(errors.ConfigError, match=r"^config.batch_size=4 does not divide over "
                     r"the 3 processes, each of which makes an equal share of every batch"):
    sharding.check_batch_sizes({"batch_size": 4}, mesh)


def test_one_process_makes_every_row():
  mesh = sharding.make_mesh(config_of({"data": 2, "sequence": 2}))
  assert sharding.process_shard(mesh) == input_pipeline.Shard(index=0, count=1)
