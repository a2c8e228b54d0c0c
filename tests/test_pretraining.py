"""Self-pretraining: masking statistics, no label or held-out input in the pretraining
batches, the fine-tune starting from the pretrained encoder, exact resume across the stage
boundary, every attention variant, and bad config values."""

import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from configs import common as config_common
from lra import attention as attention_lib
from lra import data as lra_data
from lra import errors
from lra import models
from lra import pretraining
from lra import train
from lra.tokens import PAD_ID
from tests import test_tasks
from tests.entry_points import comparable
from tests.entry_points import finish
from tests.entry_points import kill_after_checkpoint
from tests.entry_points import launch
from tests.test_train import cli_args
from tests.test_train import tiny_config

MASK_ID = 99


def _build(config, data: lra_data.TaskData, *, seed: int) -> nnx.Module:
  return models.build(config, vocab_size=data.vocab_size, num_classes=data.num_classes,
                      rngs=nnx.Rngs(params=seed))


def _runs(mask: np.ndarray) -> list[int]:
  """Lengths of the runs of True in a bool vector."""
  edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
  return list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))


@pytest.mark.parametrize("num_real, rate", [(1, 0.15), (7, 0.15), (100, 0.15), (100, 0.5)])
def test_mask_count_is_the_rate_of_the_real_tokens(num_real, rate):
  rng = np.random.default_rng(0)
  for _ in range(20):
    mask = pretraining.mask_positions(num_real, mask_rate=rate, mean_span=1, rng=rng)
    assert mask.shape == (num_real,)
    assert mask.sum() == max(1, round(rate * num_real))


def test_single_token_masks_are_uniform_over_positions():
  rng = np.random.default_rng(0)
  counts = sum(pretraining.mask_positions(40, mask_rate=0.25, mean_span=1, rng=rng)
               for _ in range(4000))
  frequency = counts / 4000
  np.testing.assert_allclose(frequency, 0.25, atol=0.035)


@pytest.mark.parametrize("mean_span", [3.0, 5.0])
def test_spans_have_the_mean_length_and_cover_every_position(mean_span):
  rng = np.random.default_rng(1)
  lengths, counts = [], np.zeros(200)
  for _ in range(500):
    mask = pretraining.mask_positions(200, mask_rate=0.15, mean_span=mean_span, rng=rng)
    assert mask.sum() == 30
    runs = _runs(mask)
    assert len(runs) == round(30 / mean_span)  # spans never touch: each is one run
    lengths += runs
    counts += mask
  assert abs(np.mean(lengths) - 30 / round(30 / mean_span)) < 1e-9
  assert np.std(lengths) > 0  # random lengths, not fixed ones
  assert counts.min() > 0  # the first and last positions are reachable too


def test_mask_batch_masks_real_tokens_only_and_targets_only_the_masked():
  rng = np.random.default_rng(2)
  lengths = [5, 60, 1, 0, 33]
  tokens = np.zeros((len(lengths), 64), np.uint16)
  for row, length in enumerate(lengths):
    tokens[row, :length] = rng.integers(1, 20, length)
  for mean_span in (1, 3):
    batch = pretraining.mask_batch(tokens, mask_rate=0.3, mean_span=mean_span,
                                   mask_id=MASK_ID, rng=rng)
    assert set(batch) == {"inputs", "targets", "weights"}
    masked = batch["weights"] == 1
    assert np.all((batch["weights"] == 0) | masked)
    np.testing.assert_array_equal(batch["targets"], tokens)
    assert not np.any(masked & (tokens == PAD_ID))  # padding is never masked or a target
    np.testing.assert_array_equal(batch["inputs"][masked], MASK_ID)
    np.testing.assert_array_equal(batch["inputs"][~masked], tokens[~masked])
    assert masked.sum(1).tolist() == [max(1, round(0.3 * n)) if n else 0 for n in lengths]


def test_causal_batch_targets_every_real_token():
  tokens = np.array([[3, 4, 5, 0], [7, 0, 0, 0]], np.uint16)
  batch = pretraining.causal_batch(tokens)
  np.testing.assert_array_equal(batch["inputs"], tokens)
  np.testing.assert_array_equal(batch["targets"], tokens)
  np.testing.assert_array_equal(batch["weights"], tokens != PAD_ID)


def _disjoint_data(pairs: bool) -> lra_data.TaskData:
  """Train rows of tokens 1-5, validation rows of 6-7 and test rows of 8-9 (so a row seen
  in a batch tells its split), labels in every split."""
  rng = np.random.default_rng(3)

  def rows(num, low, high):
    out = np.zeros((num, 40), np.uint16)
    for row in out:
      length = rng.integers(5, 40)
      row[:length] = rng.integers(low, high + 1, length)
    return out

  splits = {}
  for name, (low, high) in {"train": (1, 5), "val": (6, 7), "test": (8, 9)}.items():
    fields = ({"inputs1": rows(30, low, high), "inputs2": rows(30, low, high)} if pairs
              else {"inputs": rows(30, low, high)})
    splits[name] = {**fields, "targets": rng.integers(0, 2, 30)}
  return lra_data.TaskData(splits=splits, vocab=["<pad>"] + [str(i) for i in range(1, 10)],
                           num_classes=2)


def _sequences(batch, objective) -> list[tuple]:
  """The sequences of a batch's targets (of its packed rows: each segment's tokens)."""
  if "segment_ids" not in batch:
    return [tuple(np.trim_zeros(row, "b")) for row in batch["targets"]]
  tokens = (batch["segment_ids"] > 0) & (batch["positions"] > 0)
  shift = 1 if objective == "causal" else 0  # causal targets sit one slot left
  found = []
  for row, segments, real in zip(batch["targets"], batch["segment_ids"], tokens):
    for segment in np.unique(segments[real]):
      where = np.flatnonzero(real & (segments == segment))
      found.append(tuple(row[where - shift]))
  return found


@pytest.mark.parametrize("objective", ["mlm", "causal"])
@pytest.mark.parametrize("pairs,pack", [(False, False), (True, False), (True, True)])
def test_pretraining_batches_hold_training_inputs_only(objective, pairs, pack):
  data = _disjoint_data(pairs)
  if objective == "mlm":
    data = pretraining.with_mask_token(data)
  config = ml_collections.ConfigDict({
      "seed": 0, "batch_size": 4,
      "pretrain": {"objective": objective, "mask_rate": 0.2, "mean_span": 1.0, "pack": pack,
                   "max_sequences": 3}})
  train_rows = {tuple(np.trim_zeros(row, "b")) for name, tokens in data.splits["train"].items()
                if name.startswith("inputs") for row in tokens}
  fields = {"inputs", "targets", "weights"} | ({"segment_ids", "positions"} if pack else set())
  iterator = pretraining.train_iterator(config, data)
  seen = set()
  for _ in range(60):  # 240 rows: every one of the 30 or 60 sequences several times
    batch = next(iterator)
    assert set(batch) == fields  # no label field
    assert batch["targets"].shape == batch["inputs"].shape  # tokens, not classes
    for tokens in _sequences(batch, objective):
      assert max(tokens) <= 5, "a validation or test input reached pretraining"
      assert tokens in train_rows
      seen.add(tokens)
  assert seen == train_rows  # both documents of every pair are pretraining sequences


def test_pack_fills_rows_with_whole_sequences():
  lengths = [5, 3, 0, 7, 2, 6, 1]
  tokens = np.zeros((len(lengths), 8), np.int32)
  for row, length in enumerate(lengths):
    tokens[row, :length] = 10 * row + np.arange(1, length + 1)
  packed = pretraining.pack(tokens, max_sequences=2, rng=np.random.default_rng(0))
  assert packed["inputs"].shape[1] == 9  # the length and one CLS slot
  found = []
  for inputs, segments, positions in zip(packed["inputs"], packed["segment_ids"],
                                         packed["positions"]):
    assert segments.max() <= 2
    for segment in range(1, segments.max() + 1):
      where = np.flatnonzero(segments == segment)
      assert np.array_equal(where, np.arange(where[0], where[-1] + 1))  # contiguous
      np.testing.assert_array_equal(positions[where], np.arange(len(where)))
      assert inputs[where[0]] == PAD_ID  # the CLS slot
      found.append(tuple(inputs[where[1:]]))
    assert np.all(segments[np.flatnonzero(segments == 0)] == 0)
  expected = [tuple(row[:n]) for row, n in zip(tokens, lengths) if n]
  assert sorted(found) == sorted(expected)  # every sequence once, whole; the empty one out


@pytest.mark.parametrize("objective", ["mlm", "causal"])
def test_a_packed_row_encodes_each_sequence_as_alone(objective):
  """Every variant: the logits of each sequence of a packed row equal its logits unpacked
  (segments attend within themselves, positions restart, each has its CLS vector)."""
  config = tiny_config("unused")
  data = pretraining.with_mask_token(lra_data.TaskData(
      splits={}, vocab=["<pad>"] + [str(i) for i in range(15)], num_classes=10))
  lengths = [9, 4, 1, 13]
  tokens = np.zeros((len(lengths), 32), np.int32)
  for row, length in enumerate(lengths):
    tokens[row, :length] = np.random.default_rng(row).integers(1, 16, length)
  packed = pretraining.pack(tokens, max_sequences=4, rng=np.random.default_rng(1))
  assert len(packed["inputs"]) == 1
  for variant in attention_lib.variants():
    with config.unlocked():
      config.attention = ml_collections.ConfigDict(
          attention_lib.variant_config(variant, num_heads=2, window=4))
      config.pretrain.objective = objective
    model = _build(pretraining.stage_config(config), data, seed=0)
    logits = model(packed["inputs"], segment_ids=packed["segment_ids"],
                   positions=packed["positions"])[0]
    alone = model(tokens)
    for segment in range(1, 5):
      where = np.flatnonzero(packed["segment_ids"][0] == segment)
      row = next(r for r, n in enumerate(lengths) if n == len(where) - 1)
      # mlm: the tokens' states; causal: the CLS slot's and the tokens' but the last.
      states = where[1:] if objective == "mlm" else where[:-1]
      chex.assert_trees_all_close(logits[states], alone[row, :lengths[row]], atol=2e-5,
                                  rtol=2e-5, custom_message=f"{variant} {objective}")


def test_packed_batches_mask_and_target_within_each_sequence():
  tokens = np.zeros((3, 10), np.int32)
  for row, length in enumerate((8, 4, 3)):
    tokens[row, :length] = np.arange(1, length + 1)
  packed = pretraining.pack(tokens, max_sequences=3, rng=np.random.default_rng(0))
  batch = pretraining.mask_packed_batch(packed, mask_rate=0.3, mean_span=1, mask_id=MASK_ID,
                                        rng=np.random.default_rng(0))
  masked = batch["weights"] > 0
  np.testing.assert_array_equal(batch["inputs"][masked], MASK_ID)
  np.testing.assert_array_equal(batch["targets"], packed["inputs"])
  counts = [int(masked[row][segments == s].sum())
            for row, segments in enumerate(batch["segment_ids"])
            for s in range(1, segments.max() + 1)]
  assert sorted(counts) == sorted(max(1, round(0.3 * n)) for n in (8, 4, 3))
  assert not masked[batch["positions"] == 0].any()  # CLS slots are never masked
  causal = pretraining.causal_packed_batch(packed)
  targeted = causal["weights"] > 0
  assert targeted.sum() == 8 + 4 + 3  # every token, once, predicted from its own sequence
  following = np.roll(causal["segment_ids"], -1, axis=1)
  assert np.all(following[targeted] == causal["segment_ids"][targeted])


def test_fine_tuning_batches_hold_training_examples_only(tmp_path):
  data = _disjoint_data(pairs=False)
  config = tiny_config(tmp_path / "cache")
  iterator = lra_data.task(config).pipelines(config, data).train
  for _ in range(20):
    assert next(iterator)["inputs"].max() <= 5


@pytest.mark.slow  # every variant of the fine-tuned task: tests/test_tasks.py
def test_every_variant_pretrains_with_both_objectives():
  config = tiny_config("unused")
  data = pretraining.with_mask_token(lra_data.TaskData(
      splits={}, vocab=["<pad>"] + [str(i) for i in range(15)], num_classes=10))
  tokens = np.random.default_rng(0).integers(1, 16, (2, 24)).astype(np.uint16)
  tokens[1, 17:] = PAD_ID
  for variant in attention_lib.variants():
    for objective in ("mlm", "causal"):
      with config.unlocked():
        config.attention = ml_collections.ConfigDict(
            attention_lib.variant_config(variant, num_heads=2, window=4))
        config.pretrain.objective = objective
      pretraining.check(config)
      stage = pretraining.stage_config(config)
      model = _build(stage, data, seed=0)
      batch = (pretraining.mask_batch(tokens, mask_rate=0.3, mean_span=1,
                                      mask_id=len(data.vocab) - 1,
                                      rng=np.random.default_rng(0))
               if objective == "mlm" else pretraining.causal_batch(tokens))
      def loss(model):
        sums = model.metrics(batch)
        return sums["loss"], sums

      grads, sums = nnx.grad(loss, has_aux=True)(model)
      assert sums["count"] == batch["weights"].sum() > 0, (variant, objective)
      assert np.isfinite(float(sums["loss"])), (variant, objective)
      assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads)), (variant, objective)


def _causal_config_and_data():
  """A tiny causal-pretraining config and a task vocabulary of 15 tokens (no splits)."""
  config = tiny_config("unused")
  with config.unlocked():
    config.pretrain.objective = "causal"
  return config, lra_data.TaskData(splits={}, vocab=["<pad>"] + [str(i) for i in range(15)],
                                   num_classes=10)


def test_causal_stage_never_sees_the_future():
  config, data = _causal_config_and_data()
  model = _build(pretraining.stage_config(config), data, seed=0)
  tokens = np.random.default_rng(0).integers(1, 16, (1, 20))
  changed = tokens.copy()
  changed[0, 12:] = 1 + changed[0, 12:] % 15
  # Logits at position i predict token i from tokens before it: up to 12 they are equal.
  chex.assert_trees_all_close(model(jnp.asarray(tokens))[:, :13],
                              model(jnp.asarray(changed))[:, :13], atol=1e-6)


def _spt_config(cache, **fields):
  config = tiny_config(cache, spec="configs/listops.py:attention=longformer,size=tiny,"
                                   "pretrain=mlm", **fields)
  return config


def _params(path):
  return ocp.StandardCheckpointer().restore(os.path.abspath(path))


def test_fine_tuning_starts_from_the_pretrained_encoder(tmp_path):
  # Fine-tuning at learning rate 0 keeps its first parameters: those tested.
  config = _spt_config(tmp_path / "cache", num_train_steps=2, eval_every_steps=2,
                       checkpoint_every_steps=100, log_every_steps=1)
  with config.unlocked():
    config.pretrain.num_steps = 3
    config.optimizer.learning_rate = 0.0
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["pretrain_steps"] == 3 and results["tested_step"] == 5
  pretrained = _params(tmp_path / "run" / "checkpoints" / "3" / "state")["params"]
  tested = _params(tmp_path / "run" / "best" / "5" / "default")
  chex.assert_trees_all_equal(tested["encode"], pretrained["encode"])
  # Longformer's global projections exist in both and were pretrained too (mlm).
  assert "query_global" in tested["encode"]["encoder"]["blocks"]["0"]["attention"]
  # The head is the task model's fresh one, as in a run from scratch.
  data = pretraining.with_mask_token(lra_data.load(config))
  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  fresh = nnx.to_pure_dict(train.build_steps(config, data, mesh).state["params"])
  chex.assert_trees_all_equal(jax.tree.leaves(tested["head"]), jax.tree.leaves(fresh["head"]))
  [embedding] = jax.tree.leaves(tested["encode"]["encoder"]["embed"])
  assert not np.allclose(embedding, fresh["encode"]["encoder"]["embed"]["embedding"])


def test_causal_pretraining_starts_longformer_global_projections_as_the_local_ones():
  fresh_config, data = _causal_config_and_data()
  stage = pretraining.stage_config(fresh_config)
  assert stage.attention.name == "local" and stage.attention.causal
  _, pretrained, _ = nnx.split(_build(stage, data, seed=1), nnx.Param, ...)
  _, fresh, _ = nnx.split(_build(fresh_config, data, seed=0), nnx.Param, ...)
  merged = nnx.to_pure_dict(pretraining.transplant(pretrained, fresh))
  attention = merged["encode"]["encoder"]["blocks"][0]["attention"]
  source = nnx.to_pure_dict(pretrained)["encode"]["encoder"]["blocks"][0]["attention"]
  for name in ("query", "key", "value"):
    chex.assert_trees_all_equal(attention[f"{name}_global"], source[name])
    chex.assert_trees_all_equal(attention[name], source[name])
  chex.assert_trees_all_equal(merged["head"], nnx.to_pure_dict(fresh)["head"])
  # The fresh parameters are left as they were.
  fresh_attention = nnx.to_pure_dict(fresh)["encode"]["encoder"]["blocks"][0]["attention"]
  assert not np.allclose(fresh_attention["query"]["kernel"], source["query"]["kernel"])


def test_resume_at_the_stage_boundary_matches_an_uninterrupted_run(tmp_path):
  # Checkpoints at the end of pretraining (step 4) and at the end (step 7) only.
  fields = dict(num_train_steps=3, eval_every_steps=3, checkpoint_every_steps=100,
                log_every_steps=1)
  config = _spt_config(tmp_path / "cache", **fields)
  with config.unlocked():
    config.pretrain.num_steps = 4
  reference = train.train_and_evaluate(config, str(tmp_path / "reference"))
  shutil.copytree(tmp_path / "reference", tmp_path / "resumed")
  for name in ("checkpoints/7", "best"):
    shutil.rmtree(tmp_path / "resumed" / name)
  os.remove(tmp_path / "resumed" / "results.json")
  assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["4"]
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert resumed["pretrain_loss"] == reference["pretrain_loss"]
  assert comparable(tmp_path / "resumed") == comparable(tmp_path / "reference")


@pytest.mark.slow  # the kill and resume of a run: tests/test_train.py
def test_sigkill_in_pretraining_then_resume_matches_an_uninterrupted_run(tmp_path):
  cache = tmp_path / "cache"
  spec = "configs/listops.py:attention=longformer,size=tiny,pretrain=mlm"
  extra = ("--config.pretrain.num_steps=60", "--config.num_train_steps=6",
           "--config.checkpoint_every_steps=4", "--config.log_every_steps=2",
           "--config.eval_every_steps=3")
  reference = launch(cli_args(tmp_path / "reference", cache, *extra, spec=spec),
                     tmp_path / "ref.log")
  status, out = finish(reference, tmp_path / "ref.log")
  assert status == 0, out

  killed = launch(cli_args(tmp_path / "killed", cache, *extra, spec=spec),
                  tmp_path / "killed.log")
  steps = kill_after_checkpoint(killed, tmp_path / "killed", 8)
  assert max(steps) < 60, "killed after pretraining: lengthen it"

  resumed = launch(cli_args(tmp_path / "killed", cache, *extra, spec=spec),
                   tmp_path / "resumed.log")
  status, out = finish(resumed, tmp_path / "resumed.log")
  assert status == 0, out
  assert "Resumed from the checkpoint at step" in out
  assert comparable(tmp_path / "killed") == comparable(tmp_path / "reference")
  results = json.load(open(tmp_path / "killed" / "results.json"))
  assert results["pretrain_objective"] == "mlm" and results["pretrain_steps"] == 60
  assert 0 <= results["pretrain_accuracy"] <= 1 and results["pretrain_wall_time_s"] > 0


def test_pretrain_none_trains_as_a_config_without_pretraining(tmp_path):
  fields = dict(num_train_steps=3, eval_every_steps=3, checkpoint_every_steps=3,
                log_every_steps=1)
  with_field = tiny_config(tmp_path / "cache", **fields)
  assert with_field.pretrain.objective == "none"
  train.train_and_evaluate(with_field, str(tmp_path / "none"))
  without = tiny_config(tmp_path / "cache", **fields)
  with without.unlocked():
    del without["pretrain"]
  train.train_and_evaluate(without, str(tmp_path / "without"))
  assert comparable(tmp_path / "none") == comparable(tmp_path / "without")
  assert not any("pretrain" in key for key in comparable(tmp_path / "none")[0])


@pytest.mark.parametrize("field, value, message", [
    ("objective", "bert", "pretrain.objective must be one of none, mlm, causal"),
    ("mask_rate", 1.5, "config.pretrain.mask_rate must be in (0, 1)"),
    ("mean_span", 0.5, "config.pretrain.mean_span must be >= 1"),
    ("num_steps", 0, "config.pretrain.num_steps must be > 0"),
    ("schedule", "exponential", "config.pretrain.schedule must be one of rsqrt, cosine"),
    ("batch_size", 3, "config.pretrain.batch_size=3 does not divide over the 4 devices"),
])
def test_bad_pretrain_values_are_one_config_error(tmp_path, field, value, message):
  config = _spt_config(tmp_path / "cache")
  with config.unlocked():
    config.pretrain[field] = value
  with pytest.raises(errors.ConfigError) as error:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert message in str(error.value)
  assert not (tmp_path / "run").exists()  # checked before anything is written


def test_pretrain_argument_is_checked_at_launch(tmp_path):
  config = tiny_config(tmp_path / "cache", spec="configs/listops.py:size=tiny,pretrain=bert")
  with pytest.raises(errors.ConfigError, match="pretrain.objective must be one of none, mlm"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


# The objective each task's tiny run pretrains with: both run on every kind of input.
TASK_OBJECTIVES = {"listops": "mlm", "text": "mlm", "retrieval": "mlm", "image": "causal",
                   "pathfinder": "mlm", "pathx": "causal"}


# Two stages compile twice: `make test` runs ListOps (tokens) and Image (pixels, causal),
# `make test-slow` every task (the pipeline tests cover retrieval's pairs).
@pytest.mark.parametrize("task", [
    pytest.param(task, marks=[] if task in ("listops", "image") else [pytest.mark.slow])
    for task in sorted(TASK_OBJECTIVES)])
def test_pretrain_then_fine_tune_every_task(tmp_path, task):
  objective = TASK_OBJECTIVES[task]
  config = config_common.load_config(
      f"configs/{task}.py:attention=full,size=tiny,pretrain={objective}")
  with config.unlocked():
    config.data_path = test_tasks.TASKS[task](tmp_path / "data")
    config.data_cache_dir = str(tmp_path / "cache")
    if task in ("text", "retrieval"):
      config.data.max_length = test_tasks.BYTE_TASK_LENGTH
    config.pretrain.num_steps = 1
    config.num_train_steps = 1
    config.eval_every_steps = config.checkpoint_every_steps = config.log_every_steps = 1
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["pretrain_objective"] == objective and results["best_val_step"] == 2
  assert 0 <= results["pretrain_accuracy"] <= 1 and 0 <= results["test_accuracy"] <= 1
  records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert [r["step"] for r in records if "pretrain_loss" in r] == [1]
  assert [r["step"] for r in records if "train_loss" in r] == [2]
  vocab = json.load(open(tmp_path / "run" / "vocab.json"))
  assert (vocab[-1] == pretraining.MASK_TOKEN) == (objective == "mlm")
