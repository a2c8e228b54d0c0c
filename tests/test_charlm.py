"""Character-level LM: causality through gradients, data splits, evaluation windows, staged
training (schedule, windows, lengths, resume across a phase boundary), BPC end to end."""

import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lra import config_utils
from lra import errors
from lra import train
from lra.data import charlm
from lra.models.lm import CausalLM
from tests.entry_points import REPO
from tests.entry_points import comparable
from tests.entry_points import finish
from tests.entry_points import launch

_WORDS = ("the of and to in a is that for it as was with be by on not he this are or his "
          "from at which but have an they you were her she there been one all we their").split()


def _text_file(path, words=6000, seed=0):
  rng = np.random.default_rng(seed)
  path.write_text(" ".join(rng.choice(_WORDS, words)) + "\n")
  return str(path)


def _config(data_path="", arg="size=tiny", **model):
  config = config_utils.load_config(os.path.join(REPO, f"configs/enwik8.py:{arg}"))
  with config.unlocked():
    config.data_path = data_path
    config.data.format = "text"
    config.model.update(model)
  return config


@pytest.mark.parametrize("windows, layer_dilation, dilated_heads", [
    ((1, 1), (1, 1), 0),
    ((2, 5), (1, 2), 1),
    ((3, 2), (3, 2), 2),
    ((4, 4), (4, 1), 1),
])
def test_loss_at_t_has_zero_gradient_from_inputs_after_t(windows, layer_dilation,
                                                         dilated_heads):
  config = _config(windows=windows, layer_dilation=layer_dilation, dilated_heads=dilated_heads)
  model = CausalLM(config, vocab_size=256, num_classes=0, rngs=nnx.Rngs(0))
  length = 23
  x = jax.random.normal(jax.random.key(1), (1, length, config.model.emb_dim))
  targets = jax.random.randint(jax.random.key(2), (1, length), 0, 256)

  def loss_at(x, t):
    logits = model.logits_from_embeddings(x)
    return -jax.nn.log_softmax(logits[0, t])[targets[0, t]]

  for t in (0, 6, 13, length - 1):
    grad = jax.grad(loss_at)(x, t)[0]  # [length, emb]
    assert jnp.all(grad[t + 1:] == 0), f"loss at {t} depends on a later input"
    assert jnp.any(grad[t] != 0)


def test_split_bounds():
  assert charlm.split_bounds(100_000_000, "enwik8") == [
      (0, 90_000_000), (90_000_000, 95_000_000), (95_000_000, 100_000_000)]
  assert charlm.split_bounds(1000, "text") == [(0, 900), (900, 950), (950, 1000)]
  with pytest.raises(errors.DataError, match="config.data.format=text"):
    charlm.split_bounds(1000, "text8")


def test_missing_file_names_where_to_get_it(tmp_path):
  config = _config(str(tmp_path / "enwik8"))
  with config.unlocked():
    config.data.format = "enwik8"
  with pytest.raises(errors.DataError, match=r"enwik8.*mattmahoney.net/dc/enwik8.zip"):
    charlm.load(config)


@pytest.mark.parametrize("num_tokens, length, step, scored", [
    (100, 16, 8, 8), (101, 16, 5, 5), (17, 16, 8, 8), (10, 16, 8, 8), (200, 32, 10, 4)])
def test_eval_windows_score_each_character_at_most_once(num_tokens, length, step, scored):
  starts, weights = charlm.eval_windows(num_tokens, length, step, scored)
  predictions = num_tokens - 1
  assert starts.min() >= 0 and starts.max() + weights.shape[1] <= predictions
  times_scored = np.zeros(predictions)
  for start, row in zip(starts, weights):
    times_scored[start:start + len(row)] += row
  assert times_scored.max() == 1
  if scored == step:
    assert times_scored.min() == 1  # every character scored exactly once
  # After the first window, a scored prediction has at least length - scored of context.
  for start, row in zip(starts[1:], weights[1:]):
    assert np.all(np.nonzero(row)[0] >= len(row) - scored)


def test_staged_schedule_windows_lengths_batches_and_learning_rates(tmp_path):
  config = _config(_text_file(tmp_path / "text.txt"))
  phases = config.phases
  ends = np.cumsum(phases.steps)
  # Windows per layer, per phase: the base windows times the phase's scale.
  for phase_config, scale in zip(train.phase_configs(config), phases.window_scale):
    model = CausalLM(phase_config, vocab_size=256, num_classes=0, rngs=nnx.Rngs(0))
    windows = [dict(block.attention.core.options)["window"] for block in model.encoder.blocks]
    assert windows == [w * scale for w in config.model.windows]
  # Sequence length and batch size per step.
  data = charlm.load(config)
  iterator = charlm.train_iterator(data.splits["train"]["tokens"], phases, seed=0)
  for step in range(1, config.num_train_steps + 1):
    phase = train.phase_of_step(config, step)
    assert phase == np.searchsorted(ends, step)
    batch = next(iterator)
    assert batch["inputs"].shape == (phases.batch_size[phase], phases.seq_length[phase])
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  # Learning rate: each phase's own, after its warmup.
  _, schedule = train.make_optimizer(config)
  for count in range(config.num_train_steps):
    phase = int(np.searchsorted(ends, count + 1))
    start = ends[phase] - phases.steps[phase]
    expected = phases.learning_rate[phase] * min(1, (count - start + 1) /
                                                 phases.warmup_steps[phase])
    assert float(schedule(count)) == pytest.approx(expected)


def test_phases_must_add_up(tmp_path):
  config = _config(_text_file(tmp_path / "text.txt"))
  with config.unlocked():
    config.num_train_steps = 5
  with pytest.raises(errors.ConfigError, match="must equal the sum of config.phases.steps"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_tiny_lm_trains_evaluates_bpc_and_resumes_across_a_phase_boundary(tmp_path):
  text = _text_file(tmp_path / "text.txt", words=20000)
  # Two phases of 6 steps, checkpoints only at the boundary (6) and the end (12): a run
  # killed after the first one resumes from the phase boundary.
  extra = ["--config=configs/enwik8.py:size=tiny", f"--config.data_path={text}",
           "--config.data.format=text", "--config.phases.steps=(6, 6)",
           "--config.num_train_steps=12", "--config.checkpoint_every_steps=6",
           "--config.eval_every_steps=6", "--config.log_every_steps=2"]
  reference = launch([*extra, f"--workdir={tmp_path / 'reference'}"], tmp_path / "ref.log")
  status, out = finish(reference, tmp_path / "ref.log")
  assert status == 0, out
  results = json.load(open(tmp_path / "reference" / "results.json"))
  assert 0 < results["test_bpc"] < 8 and results["best_val_bpc"] > 0
  assert results["unigram_entropy_bits"] == pytest.approx(charlm.unigram_entropy_bits(
      np.fromfile(text, np.uint8)[-(os.path.getsize(text) // 20):]))
  assert (tmp_path / "reference" / "curves.png").exists()

  killed = launch([*extra, f"--workdir={tmp_path / 'killed'}"], tmp_path / "killed.log")
  checkpoints = tmp_path / "killed" / "checkpoints"
  deadline = time.time() + 300
  while not (checkpoints.exists() and "6" in os.listdir(checkpoints)):
    assert killed.poll() is None, "the run ended before it could be killed"
    assert time.time() < deadline
    time.sleep(0.05)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  if (tmp_path / "killed" / "results.json").exists():
    pytest.skip("the run finished before the kill landed")
  resumed = launch([*extra, f"--workdir={tmp_path / 'killed'}"], tmp_path / "resumed.log")
  status, out = finish(resumed, tmp_path / "resumed.log")
  assert status == 0, out
  assert "Resumed from the checkpoint at step 6" in out
  assert comparable(tmp_path / "killed") == comparable(tmp_path / "reference")
