"""Character-level LM training: the staged schedule (windows, lengths, batches and learning
rates per phase), BPC end to end, and resume across a phase boundary. Causality is tested in
tests/models/test_lm.py, the data in tests/data/test_charlm.py."""

import json
import os
import signal
import time

import numpy as np
import pytest
from flax import nnx

from configs import common as config_common
from lra import data as lra_data
from lra import errors
from lra import optimizers
from lra import train
from lra.data import charlm
from lra.models.lm import CausalLM
from tests.data import fixtures
from tests.entry_points import REPO
from tests.entry_points import comparable
from tests.entry_points import finish
from tests.entry_points import launch


def tiny_lm_config(data_path):
  """The tiny char-LM config (`configs/enwik8.py`) on the text file `data_path`."""
  config = config_common.load_config(os.path.join(REPO, "configs/enwik8.py:size=tiny"))
  with config.unlocked():
    config.data_path = data_path
    config.data.format = "text"
  return config


def _expected_learning_rate(phases, count: int) -> float:
  """The rate of update `count + 1`: its phase's, after the phase's linear warmup."""
  ends = np.cumsum(phases.steps)
  phase = int(np.searchsorted(ends, count + 1))
  into = count + 1 - (ends[phase] - phases.steps[phase])
  return phases.learning_rate[phase] * min(1.0, into / phases.warmup_steps[phase])


def test_staged_schedule_windows_lengths_batches_and_learning_rates(tmp_path):
  config = tiny_lm_config(fixtures.write_text(tmp_path))
  with config.unlocked():  # longer phases, so that warmups show
    config.phases.update(steps=(5, 4), warmup_steps=(3, 2))
    config.num_train_steps = 9
  phases = config.phases
  task_phases = lra_data.task(config).phases(config)
  # Windows per layer, per phase: the base windows times the phase's scale.
  for phase_config, scale in zip(task_phases.configs, phases.window_scale):
    model = CausalLM(phase_config, vocab_size=256, num_classes=0, rngs=nnx.Rngs(0))
    windows = [dict(block.attention.core.options)["window"] for block in model.encoder.blocks]
    assert windows == [w * scale for w in config.model.windows]
  # Sequence length and batch size per step.
  data = charlm.load(config)
  iterator = charlm.train_iterator(data.splits["train"]["tokens"], phases, seed=0)
  for step in range(1, config.num_train_steps + 1):
    phase = task_phases.of_step(step)
    assert phase == (0 if step <= 5 else 1)
    batch = next(iterator)
    assert batch["inputs"].shape == (phases.batch_size[phase], phases.seq_length[phase])
  # Learning rate: each phase's own, after its warmup.
  _, schedule = optimizers.make_optimizer(config, task_phases)
  rates = [float(schedule(count)) for count in range(config.num_train_steps)]
  np.testing.assert_allclose(rates, [_expected_learning_rate(phases, c) for c in range(9)],
                             rtol=1e-6)
  lr0, lr1 = phases.learning_rate
  np.testing.assert_allclose(rates, [lr0 / 3, 2 * lr0 / 3, lr0, lr0, lr0, lr1 / 2, lr1, lr1,
                                     lr1], rtol=1e-6)


@pytest.mark.parametrize("field, value, message", [
    ("num_train_steps", 5, "must equal the sum of config.phases.steps"),
    ("phases.batch_size", (4, 2, 2), "one entry per phase"),
    ("phases.batch_size", (4, 3), r"phases.batch_size\[1\]=3 does not divide over"),
    ("evaluation.protocol", "sliding", "evaluation.protocol must be one of strided, streaming"),
    ("evaluation.chunk", 0, "evaluation.streams and evaluation.chunk must be >= 1"),
])
def test_bad_phases_are_config_errors(tmp_path, field, value, message):
  config = tiny_lm_config(fixtures.write_text(tmp_path))
  with config.unlocked():
    if "." in field:
      section, key = field.split(".")
      config[section][key] = value
    else:
      config[field] = value
  with pytest.raises(errors.ConfigError, match=message):
    train.train_and_evaluate(config, str(tmp_path / "run"))


@pytest.mark.slow  # a trained LM end to end: tests/test_lm_commands.py
def test_tiny_lm_trains_evaluates_bpc_and_resumes_across_a_phase_boundary(tmp_path):
  text = fixtures.write_text(tmp_path, num_words=20000)
  # Two phases of 6 steps, checkpoints only at the boundary (6) and the end (12): a run
  # killed after the first one resumes from the phase boundary.
  extra = ["--config=configs/enwik8.py:size=tiny", f"--config.data_path={text}",
           "--config.data.format=text", "--config.phases.steps=(6, 6)",
           "--config.num_train_steps=12", "--config.checkpoint_every_steps=6",
           "--config.eval_every_steps=6", "--config.log_every_steps=2"]
  reference = launch([*extra, f"--workdir={tmp_path / 'reference'}"], tmp_path / "ref.log")
  status, out = finish(reference, tmp_path / "ref.log")
  assert status == 0, out
  assert "test bpc: " in out and "(unigram entropy: " in out
  results = json.load(open(tmp_path / "reference" / "results.json"))
  assert 0 < results["test_bpc"] < 8 and results["best_val_bpc"] > 0
  assert results["test_loss"] == pytest.approx(results["test_bpc"] * np.log(2))
  assert results["best_val_step"] in (6, 12)
  assert results["unigram_entropy_bits"] == pytest.approx(charlm.unigram_entropy_bits(
      np.fromfile(text, np.uint8)[-(os.path.getsize(text) // 20):]))
  assert (tmp_path / "reference" / "curves.png").exists()
  # The learning rate logged at every other step is its phase's.
  config = tiny_lm_config(text)
  with config.unlocked():
    config.phases.steps = (6, 6)
  for line in open(tmp_path / "reference" / "metrics.jsonl"):
    record = json.loads(line)
    if "learning_rate" in record:
      assert record["learning_rate"] == pytest.approx(
          _expected_learning_rate(config.phases, record["step"] - 1))

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
