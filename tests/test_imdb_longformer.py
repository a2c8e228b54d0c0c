"""Fine-tuning a pretrained HF Longformer on IMDb (`configs/imdb_longformer.py`): the
model kind `pretrained_longformer`, the trainer starting from the checkpoint, learning,
exact resume and the errors, on the tiny random checkpoint fixture and its tiny BPE."""

import json
import os
import shutil

import chex
import jax
import numpy as np
import pytest
from flax import nnx

from configs import common as config_common
from lra import data as lra_data
from lra import errors
from lra import models
from lra import optimizers
from lra import train
from lra.data import PAD_ID
from tests.data import fixtures
from tests.entry_points import REPO
from tests.entry_points import comparable
from tests import test_train_mesh
from tests.test_configs import parse

FIXTURES = os.path.join(REPO, "tests", "fixtures", "hf_longformer")
CHECKPOINT = os.path.join(FIXTURES, "tiny")  # masked LM: the classifier head is fresh
SPEC = os.path.join(REPO, "configs", "imdb_longformer.py")


def tiny_config(data_path=None, init_from=CHECKPOINT, size="tiny", **fields):
  config = config_common.load_config(f"{SPEC}:size={size}")
  with config.unlocked():
    config.init_from = init_from
    config.data_path = None if data_path is None else str(data_path)
    config.update(fields)
  return config


def checkpoint_copy(tmp_path, **config_fields) -> str:
  """The tiny checkpoint and its tokenizer in a scratch folder, config.json updated."""
  folder = tmp_path / "checkpoint"
  shutil.copytree(CHECKPOINT, folder)
  with open(folder / "config.json") as f:
    fields = json.load(f)
  with open(folder / "config.json", "w") as f:
    json.dump({**fields, **config_fields}, f)
  return str(folder)


def encoder_params(model) -> dict:
  return nnx.to_pure_dict(nnx.state(model.longformer, nnx.Param))


def test_config_fields_follow_init_from_and_num_train_steps():
  config = parse("imdb_longformer.py", "--config.init_from=ckpt",
                 "--config.num_train_steps=500")
  assert config.data.tokenizer_path == "ckpt" and config.optimizer.warmup_steps == 50
  paper = parse("imdb_longformer.py")
  assert paper.data.max_length == 4096 and paper.batch_size == 32
  assert paper.optimizer.learning_rate == 3e-5 and paper.optimizer.schedule == "linear"
  assert paper.optimizer.warmup_steps == 1055 and paper.num_train_steps == 10547


def test_learning_rate_warms_up_over_10_percent_then_decays_linearly_to_0():
  config = parse("imdb_longformer.py", "--config.num_train_steps=1000")
  _, schedule = optimizers.make_optimizer(config, lra_data.single_phase(config))
  rates = [float(schedule(count)) for count in (0, 50, 100, 550, 1000)]
  np.testing.assert_allclose(rates, [0.0, 1.5e-5, 3e-5, 1.5e-5, 0.0], rtol=1e-5, atol=1e-12)


def test_logits_match_huggingface_through_the_id_shift():
  # The classifier checkpoint (3 labels) with HF's logits; first token global, as in HF.
  with np.load(os.path.join(FIXTURES, "tiny_outputs.npz")) as hf:
    roberta_ids, mask, expected = hf["input_ids"], hf["attention_mask"], hf["cls_logits_no_global"]
  config = tiny_config(init_from=os.path.join(FIXTURES, "tiny_cls"))
  model = models.build(config, vocab_size=301, num_classes=3, rngs=nnx.Rngs(0))
  inputs = np.where(mask == 1, roberta_ids + 1, PAD_ID)
  logits = model({"inputs": inputs})
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_training_starts_from_the_checkpoint_and_learning_rate_0_keeps_it(tmp_path):
  loaded = models.longformer_from_pretrained(CHECKPOINT, head="sequence_classification")
  data = lra_data.TaskData(splits={}, vocab=["<pad>"] * 291, num_classes=2)
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  batch = {"inputs": np.tile(np.arange(1, 33, dtype=np.int32), (4, 1)),
           "targets": np.array([0, 1, 0, 1], np.int32), "weights": np.ones(4, np.float32)}
  batch["inputs"][1, 20:] = PAD_ID
  for learning_rate in (0.0, 1e-2):
    config = tiny_config(optimizer=dict(learning_rate=learning_rate, warmup_steps=0))
    steps = train.build_steps(config, data, mesh)
    state = steps.state
    # Host copies: the train step donates the state.
    start = jax.tree.map(np.asarray, nnx.to_pure_dict(state["params"])["pretrained"])
    chex.assert_trees_all_equal(start["longformer"], encoder_params(loaded))
    for _ in range(2):
      state, sums = steps.train_steps[0](state, batch)
    assert np.isfinite(sums["loss"]) and sums["count"] == 4
    after = nnx.to_pure_dict(state["params"])["pretrained"]
    if learning_rate == 0:
      chex.assert_trees_all_equal(after, start)
    else:
      assert not np.allclose(after["longformer"]["embeddings"]["word_embeddings"]["embedding"],
                             start["longformer"]["embeddings"]["word_embeddings"]["embedding"])


def test_the_head_is_fresh_from_the_seed_and_dropout_uses_the_given_rngs(tmp_path):
  config = tiny_config(init_from=checkpoint_copy(tmp_path, hidden_dropout_prob=0.5))
  build = lambda seed: models.build(config, vocab_size=291, num_classes=2,
                                    rngs=nnx.Rngs(params=seed))
  first, second = build(0), build(1)
  chex.assert_trees_all_equal(encoder_params(first.pretrained), encoder_params(second.pretrained))
  assert not np.allclose(first.pretrained.out_proj.kernel[...],
                         second.pretrained.out_proj.kernel[...])
  five = models.build(config, vocab_size=291, num_classes=5, rngs=nnx.Rngs(0))
  assert five.pretrained.out_proj.kernel[...].shape == (64, 5)  # the task's, not config.json's
  batch = {"inputs": np.arange(1, 25, dtype=np.int32).reshape(2, 12),
           "targets": np.array([0, 1], np.int32), "weights": np.ones(2, np.float32)}
  loss = lambda **kw: float(first.metrics(batch, **kw)["loss"])
  assert loss(deterministic=True) == loss(deterministic=True)
  dropped = loss(deterministic=False, rngs=nnx.Rngs(dropout=0))
  assert dropped == loss(deterministic=False, rngs=nnx.Rngs(dropout=0))
  assert dropped != loss(deterministic=False, rngs=nnx.Rngs(dropout=1))
  assert dropped != loss(deterministic=True)


def test_missing_init_from_or_tokenizer_files_fail_before_anything_is_written(tmp_path):
  imdb = fixtures.write_imdb(tmp_path)
  with pytest.raises(errors.ConfigError, match="tokenizer_path is not set.*config.init_from"):
    train.train_and_evaluate(tiny_config(imdb, init_from=None), str(tmp_path / "run"))
  bare = checkpoint_copy(tmp_path)
  os.remove(os.path.join(bare, "merges.txt"))
  with pytest.raises(errors.ConfigError, match="lacks merges.txt.*longformer-base-4096"):
    train.train_and_evaluate(tiny_config(imdb, init_from=bare), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
  with pytest.raises(errors.ConfigError, match="config.init_from is not set"):
    models.build(tiny_config(imdb, init_from=None), vocab_size=291, num_classes=2,
                 rngs=nnx.Rngs(0))


def test_data_and_checkpoint_errors_are_named(tmp_path):
  with pytest.raises(errors.DataError, match="config.data_path is not set.*aclImdb_v1"):
    train.train_and_evaluate(tiny_config(None), str(tmp_path / "no_data"))
  imdb = fixtures.write_imdb(tmp_path)
  # A tokenizer with more ids than the checkpoint embeds.
  bigger = checkpoint_copy(tmp_path)
  with open(os.path.join(bigger, "vocab.json")) as f:
    vocab = json.load(f)
  vocab.update({f"<extra{i}>": len(vocab) + i for i in range(20)})
  with open(os.path.join(bigger, "vocab.json"), "w") as f:
    json.dump(vocab, f)
  with pytest.raises(errors.ConfigError, match="tokenizer has 310 ids but the checkpoint"):
    train.train_and_evaluate(tiny_config(imdb, init_from=bigger), str(tmp_path / "big"))
  # A checkpoint's own classifier (3 labels) of another size than the task's 2 classes.
  with pytest.raises(errors.CheckpointError, match="shape mismatch: classifier.out_proj"):
    models.build(tiny_config(imdb, init_from=os.path.join(FIXTURES, "tiny_cls")),
                 vocab_size=291, num_classes=2, rngs=nnx.Rngs(0))
  os.remove(os.path.join(bigger, "model.safetensors"))
  with pytest.raises(errors.CheckpointError, match="no model.safetensors"):
    train.train_and_evaluate(tiny_config(imdb, init_from=bigger), str(tmp_path / "none"))


def _learning_config(tmp_path, **fields):
  # 32 BPE tokens keep 'Film', the split and the first sentiment words of every review.
  imdb = fixtures.write_imdb(tmp_path, num_reviews=400)
  return tiny_config(imdb, size="small", **{
      "num_train_steps": 30, "eval_every_steps": 30, "checkpoint_every_steps": 10,
      "log_every_steps": 10, "eval_batch_size": 100, "data": {"max_length": 32}, **fields})


@pytest.mark.slow  # learning, not wiring
def test_fine_tuning_learns_the_sentiment_words(tmp_path):
  results = train.train_and_evaluate(_learning_config(tmp_path), str(tmp_path / "run"))
  assert results["majority_class_rate"] == 0.5
  assert results["test_accuracy"] > 0.9, results


@pytest.mark.slow  # the split: tests/test_train_mesh.py
def test_fine_tuning_gives_the_same_losses_with_the_sequence_split(tmp_path):
  config = _learning_config(tmp_path, num_train_steps=2, eval_every_steps=2,
                            checkpoint_every_steps=2, log_every_steps=1)
  one_device, *split = test_train_mesh.train_on_meshes(tmp_path, config)
  for curves in split:
    test_train_mesh.assert_same_curves(curves, one_device)


@pytest.mark.slow
def test_resumed_fine_tuning_matches_an_uninterrupted_run(tmp_path):
  config = _learning_config(tmp_path, num_train_steps=8, eval_every_steps=4,
                            checkpoint_every_steps=4, log_every_steps=2)
  reference = tmp_path / "reference"
  train.train_and_evaluate(config, str(reference))
  resumed = tmp_path / "resumed"
  shutil.copytree(reference, resumed)
  for folder in ("checkpoints", "best"):
    for step in os.listdir(resumed / folder):
      if step.isdigit() and int(step) > 4:
        shutil.rmtree(resumed / folder / step)
  os.remove(resumed / "results.json")
  assert sorted(os.listdir(resumed / "checkpoints")) == ["4"]
  train.train_and_evaluate(config, str(resumed))
  assert comparable(resumed) == comparable(reference)
