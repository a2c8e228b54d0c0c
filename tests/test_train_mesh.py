"""The trainer on a `(data, sequence)` mesh (`config.mesh`): the same losses as on one device
for ListOps and the char-LM, exact resume on another mesh shape, and bad meshes named."""

import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from experiments.bench import harness
from lra import data as lra_data
from lra import errors
from lra import sharding
from lra import train
from tests.data import fixtures
from tests.test_train import tiny_config

LOSS_TOLERANCE = dict(rel=1e-4, abs=1e-6)
MESHES = [{"data": 1, "sequence": 1}, {"data": 2, "sequence": 2}, {"data": 1, "sequence": 4}]


def curves_of(workdir):
  """Every logged loss and accuracy of a run, by step, and its test figures."""
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  curves = {(r["step"], key): value for r in records for key, value in r.items()
            if key.endswith(("_loss", "_accuracy", "_bpc"))}
  results = json.load(open(os.path.join(workdir, "results.json")))
  curves.update({key: value for key, value in results.items() if key.startswith("test_")})
  return curves


def assert_same_curves(actual, expected):
  assert actual.keys() == expected.keys()
  for key, value in expected.items():
    assert actual[key] == pytest.approx(value, **LOSS_TOLERANCE), key


def train_on_meshes(tmp_path, config):
  """Trains `config` on each of `MESHES`; returns the runs' curves."""
  curves = []
  for mesh in MESHES:
    with config.unlocked():
      config.mesh.update(mesh)
    workdir = tmp_path / f"data{mesh['data']}_sequence{mesh['sequence']}"
    results = train.train_and_evaluate(config, str(workdir))
    assert results["mesh"] == mesh
    curves.append(curves_of(workdir))
  return curves


# The split in a compiled step: test_the_train_step_moves_halos_and_global_slots_not_the_sequence.
@pytest.mark.slow
def test_listops_longformer_gives_the_same_losses_with_the_sequence_split(tmp_path):
  # Batches of 32 to 128 tokens, window 8 and the global CLS token: split in 4, the windows
  # of 32-token batches reach over whole shards.
  config = tiny_config(tmp_path / "cache", num_train_steps=3, eval_every_steps=3,
                       log_every_steps=1, checkpoint_every_steps=3)
  one_device, *split = train_on_meshes(tmp_path, config)
  assert any(key[1] == "train_loss" for key in one_device)
  for curves in split:
    assert_same_curves(curves, one_device)


@pytest.mark.slow  # ListOps Longformer covers the split in make test
def test_char_lm_gives_the_same_losses_with_the_sequence_split(tmp_path):
  # Two phases: 16 then 32 characters, causal windows of 8 and 16 (halos over several shards).
  config = tiny_config(tmp_path / "cache", "configs/enwik8.py:size=tiny",
                       data_path=fixtures.write_text(tmp_path, num_words=4000),
                       eval_every_steps=3, log_every_steps=1, checkpoint_every_steps=3)
  with config.unlocked():
    config.data.format = "text"
  one_device, *split = train_on_meshes(tmp_path, config)
  assert any(key[1] == "train_loss" for key in one_device)
  for curves in split:
    assert_same_curves(curves, one_device)


def test_a_run_resumes_on_another_mesh_shape(tmp_path, caplog):
  """A run checkpointed on a data-parallel mesh resumes on a sequence-parallel one and ends
  as the uninterrupted run does (the SIGKILL resume itself: tests/test_train.py)."""
  config = tiny_config(tmp_path / "cache", num_train_steps=8, checkpoint_every_steps=4,
                       log_every_steps=2, eval_every_steps=4)
  with config.unlocked():
    config.mesh.update({"data": 4, "sequence": 1})
  reference = tmp_path / "reference"
  train.train_and_evaluate(config, str(reference))
  # The workdir as a run stopped after its step-4 checkpoint leaves it.
  resumed = tmp_path / "resumed"
  shutil.copytree(reference, resumed)
  for folder in ("checkpoints", "best"):
    for step in os.listdir(resumed / folder):
      if step.isdigit() and int(step) > 4:
        shutil.rmtree(resumed / folder / step)
  os.remove(resumed / "results.json")
  with config.unlocked():
    config.mesh.update({"data": 1, "sequence": 4})
  with caplog.at_level(logging.INFO):
    results = train.train_and_evaluate(config, str(resumed))
  assert "Resumed from the checkpoint at step 4." in caplog.messages
  assert results["mesh"] == {"data": 1, "sequence": 4}
  assert_same_curves(curves_of(resumed), curves_of(reference))


def test_the_train_step_moves_halos_and_global_slots_not_the_sequence(tmp_path):
  """Sharding propagates through the position-wise layers: no collective of the compiled
  train step moves more than a halo of hidden states."""
  config = tiny_config(tmp_path / "cache")  # 2 layers x 32, window 8, the CLS token global
  with config.unlocked():
    config.mesh.update({"data": 1, "sequence": 4})
  mesh = sharding.make_mesh(config)
  steps = train.build_steps(config, lra_data.load(config), mesh)
  batch_size, length = config.batch_size, config.data.max_length  # shards of 32 tokens
  batch = {"inputs": np.ones((batch_size, length), np.int32),
           "targets": np.zeros(batch_size, np.int32), "weights": np.ones(batch_size, np.float32)}
  # Compiled as a run compiles it (tests/conftest.py turns most optimizations off).
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    with jax.set_mesh(mesh):
      hlo = steps.train_steps[0].lower(
          steps.state, sharding.batch_placement(mesh)(batch)).compile().as_text()
  finally:
    jax.config.update("jax_disable_most_optimizations", True)
  assert "collective-permute" in hlo
  halo_of_hidden_states = batch_size * config.attention.window * config.model.emb_dim
  shard_of_hidden_states = batch_size * -(-(length + 1) // 4) * config.model.emb_dim
  for line in hlo.splitlines():
    for op, shape, _ in harness.hlo_collectives(line):
      # Prepending the CLS vector shifts every position by one: the embedded sequence is
      # resharded once, by the concatenation. Every other message is a halo or global slots.
      cls_shift = op == "all-to-all" and "jvp()/concatenate" in line
      limit = shard_of_hidden_states if cls_shift else halo_of_hidden_states
      assert np.prod(shape) <= limit, line


@pytest.mark.parametrize("mesh, spec, message", [
    ({"data": 3, "sequence": -1}, "configs/listops.py:attention=longformer,size=tiny",
     "do not divide by 3"),
    ({"data": 4, "sequence": 2}, "configs/listops.py:attention=longformer,size=tiny",
     "asks for 8 devices; there are 4"),
    ({"data": 0, "sequence": 1}, "configs/listops.py:attention=longformer,size=tiny",
     "must be positive"),
    ({"data": 1, "sequence": 2}, "configs/listops.py:attention=full,size=tiny",
     "'full' attention cannot attend over"),
    ({"data": 1, "sequence": -1}, "configs/listops.py:attention=longformer,size=tiny",
     None),
])
def test_bad_meshes_are_named(tmp_path, mesh, spec, message):
  config = tiny_config(tmp_path / "cache", spec)
  with config.unlocked():
    config.mesh.update(mesh)
  if message is None:  # a good one
    assert dict(sharding.make_mesh(config).shape) == {"data": 1, "sequence": 4}
    return
  with pytest.raises(errors.ConfigError, match=message):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_batches_split_over_data_must_divide(tmp_path):
  config = tiny_config(tmp_path / "cache", batch_size=6)
  with config.unlocked():
    config.mesh.update({"data": 4, "sequence": 1})
  with pytest.raises(errors.ConfigError, match="batch_size=6 does not divide over the 4"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert jax.device_count() == 4
