"""Tests of the character-level LM data: splits, file errors, training crops and the scored
evaluation windows."""

import os

import numpy as np
import pytest

from configs import common as config_common
from lra import errors
from lra.data import charlm
from tests.data import fixtures
from tests.entry_points import REPO


def _config(data_path, data_format="text"):
  config = config_common.load_config(os.path.join(REPO, "configs/enwik8.py:size=tiny"))
  with config.unlocked():
    config.data_path = data_path
    config.data.format = data_format
  return config


def test_split_is_90_5_5_and_exactly_90m_5m_5m_for_the_standard_files():
  assert charlm.split_bounds(100_000_000) == [
      (0, 90_000_000), (90_000_000, 95_000_000), (95_000_000, 100_000_000)]
  assert charlm.split_bounds(1000) == [(0, 900), (900, 950), (950, 1000)]
  assert charlm.split_bounds(1019) == [(0, 919), (919, 969), (969, 1019)]


def test_load_splits_the_bytes_in_order(tmp_path):
  path = fixtures.write_text(tmp_path)
  data = charlm.load(_config(path))
  raw = np.fromfile(path, np.uint8)
  joined = np.concatenate([data.splits[s]["tokens"] for s in ("train", "val", "test")])
  np.testing.assert_array_equal(joined, raw)
  assert len(data.splits["test"]["tokens"]) == len(raw) // 20
  assert data.vocab_size == 256 and data.num_classes == 0
  assert data.vocab[ord("a")] == "a"


def test_a_non_standard_enwik8_file_is_split_in_proportion_with_a_warning(tmp_path, caplog):
  data = charlm.load(_config(fixtures.write_text(tmp_path), "enwik8"))
  assert "not the 100000000 of the standard enwik8 file" in caplog.text
  assert len(data.splits["val"]["tokens"]) == len(data.splits["test"]["tokens"])


@pytest.mark.parametrize("data_format, url", [
    ("enwik8", "http://mattmahoney.net/dc/enwik8.zip"),
    ("text8", "http://mattmahoney.net/dc/text8.zip")])
def test_missing_file_names_the_file_and_where_to_get_it(tmp_path, data_format, url):
  with pytest.raises(errors.DataError, match=f"{data_format} file unzipped from {url}"):
    charlm.load(_config(str(tmp_path / data_format), data_format))


def test_a_zip_archive_is_refused(tmp_path):
  path = tmp_path / "enwik8.zip"
  path.write_bytes(b"PK\x03\x04" + bytes(5000))
  with pytest.raises(errors.DataError, match="zip archive; unzip it"):
    charlm.load(_config(str(path), "enwik8"))


def test_a_file_shorter_than_one_crop_is_refused(tmp_path):
  path = tmp_path / "short.txt"
  path.write_text("abc")
  with pytest.raises(errors.DataError, match="fewer than one training crop"):
    charlm.load(_config(str(path)))


def test_training_crops_are_a_pure_function_of_seed_and_step(tmp_path):
  config = _config(fixtures.write_text(tmp_path))
  tokens = charlm.load(config).splits["train"]["tokens"]
  first = list(charlm.train_iterator(tokens, config.phases, seed=3))
  assert len(first) == sum(config.phases.steps)
  # Restoring the state after 4 batches (across the phase boundary at 3) continues exactly.
  running = charlm.train_iterator(tokens, config.phases, seed=3)
  for _ in range(4):
    next(running)
  resumed = charlm.train_iterator(tokens, config.phases, seed=3)
  resumed.set_state(running.get_state())
  np.testing.assert_array_equal(next(resumed)["inputs"], first[4]["inputs"])
  for step, batch in enumerate(first):
    phase = charlm.phase_of(step + 1, config.phases.steps)
    shape = (config.phases.batch_size[phase], config.phases.seq_length[phase])
    assert batch["inputs"].shape == batch["targets"].shape == shape
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    # Every crop is a contiguous piece of the text.
    text = tokens.tobytes()
    for row_in, row_target in zip(batch["inputs"], batch["targets"]):
      assert bytes(row_in.astype(np.uint8)) + bytes([row_target[-1]]) in text
  other_seed = next(charlm.train_iterator(tokens, config.phases, seed=4))
  assert not np.array_equal(other_seed["inputs"], first[0]["inputs"])


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


def test_eval_batches_score_every_prediction_once_and_pad_with_weight_0(tmp_path):
  config = _config(fixtures.write_text(tmp_path))
  tokens = charlm.load(config).splits["val"]["tokens"][:101]
  with config.unlocked():
    config.evaluation.update(length=32, step=16, scored_length=16, max_chars=0)
  batches = list(charlm.eval_batches(tokens, config.evaluation, batch_size=4))
  assert all(b["inputs"].shape == (4, 32) for b in batches)
  assert sum(float(b["weights"].sum()) for b in batches) == 100  # every prediction once
  with config.unlocked():
    config.evaluation.max_chars = 50
  batches = list(charlm.eval_batches(tokens, config.evaluation, batch_size=4))
  assert sum(float(b["weights"].sum()) for b in batches) == 49


@pytest.mark.parametrize("step, scored, message", [
    (40, 16, "evaluation.step must be in"),
    (16, 20, "would score characters twice")])
def test_bad_evaluation_windows_are_config_errors(step, scored, message):
  config = _config(None)
  with config.unlocked():
    config.evaluation.update(step=step, scored_length=scored)
  with pytest.raises(errors.ConfigError, match=message):
    charlm.check_evaluation(config.evaluation)


def test_unigram_entropy():
  assert charlm.unigram_entropy_bits(np.array([1, 2, 3, 4], np.uint8)) == pytest.approx(2.0)
  assert charlm.unigram_entropy_bits(np.zeros(9, np.uint8)) == 0.0
