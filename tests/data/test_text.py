"""Tests of the IMDb byte-level loader on a tiny aclImdb folder."""

import os

import numpy as np
import pytest

from lra import errors
import lra.data
from lra.data import PAD_ID
from lra.data import text
from tests.data import fixtures


@pytest.fixture
def imdb(tmp_path):
  return fixtures.write_imdb(tmp_path, num_reviews=24)


def _config(path, tmp_path, **options):
  return fixtures.data_config("text", path, tmp_path / "cache", **options)


def _rows(inputs):
  return [fixtures.token_bytes(row) for row in inputs]


def test_splits_sizes_labels_and_padding(imdb, tmp_path):
  data = lra.data.load(_config(imdb, tmp_path, max_length=4000, val_fraction=0.25))
  assert data.num_classes == 2
  assert {k: len(v["targets"]) for k, v in data.splits.items()} == {
      "train": 18, "val": 6, "test": 24}
  for split in data.splits.values():
    inputs = split["inputs"]
    assert inputs.ndim == 2 and split["targets"].dtype == np.int32
    lengths = (inputs != PAD_ID).sum(axis=1)
    # Right padding only, to the longest review of the split.
    assert inputs.shape[1] == lengths.max()
    for row, n in zip(inputs, lengths):
      assert np.all(row[:n] != PAD_ID) and np.all(row[n:] == PAD_ID)
  # Test files are read neg then pos, each folder sorted.
  np.testing.assert_array_equal(data.splits["test"]["targets"], [0] * 12 + [1] * 12)


def test_tokens_are_file_bytes_plus_one(imdb, tmp_path):
  data = text.load(_config(imdb, tmp_path))
  first_neg = sorted(os.listdir(os.path.join(imdb, "test", "neg")))[0]
  with open(os.path.join(imdb, "test", "neg", first_neg), "rb") as f:
    raw = f.read()
  row = data.splits["test"]["inputs"][0]
  np.testing.assert_array_equal(row[:len(raw)], np.frombuffer(raw, np.uint8) + 1)
  # UTF-8 is kept as bytes: 'é' is two tokens.
  assert "caf\u00e9".encode() in _rows(data.splits["test"]["inputs"])[0]
  assert b"<br />" in raw


def test_vocab_names_every_byte(imdb, tmp_path):
  vocab = text.load(_config(imdb, tmp_path)).vocab
  assert len(vocab) == 257 and vocab[PAD_ID] == "<pad>"
  assert len(set(vocab)) == 257
  assert vocab[ord("a") + 1] == "a" and vocab[ord(" ") + 1] == "<space>"
  assert all(name.isprintable() for name in vocab)


def test_truncates_to_max_length(imdb, tmp_path):
  data = text.load(_config(imdb, tmp_path, max_length=16))
  for split in data.splits.values():
    assert split["inputs"].shape[1] == 16
    assert np.all(split["inputs"] != PAD_ID)  # Every review is longer than 16 bytes.


def test_validation_comes_from_train_and_is_seeded(imdb, tmp_path):
  data = text.load(_config(imdb, tmp_path, val_fraction=0.25))
  again = text.load(_config(imdb, tmp_path, val_fraction=0.25))
  other_seed = text.load(fixtures.data_config("text", imdb, tmp_path, seed=1,
                                              val_fraction=0.25))
  for split in data.splits:
    for field in data.splits[split]:
      np.testing.assert_array_equal(data.splits[split][field], again.splits[split][field])
  train, val = _rows(data.splits["train"]["inputs"]), _rows(data.splits["val"]["inputs"])
  train_files = []
  for label_name in ("neg", "pos"):
    folder = os.path.join(imdb, "train", label_name)
    for name in os.listdir(folder):
      with open(os.path.join(folder, name), "rb") as f:
        train_files.append(f.read())
  # Train and val partition the labelled train reviews (unsup is left out); test is apart.
  assert sorted(train + val) == sorted(train_files)
  assert not set(train + val) & set(_rows(data.splits["test"]["inputs"]))
  assert set(val) != set(_rows(other_seed.splits["val"]["inputs"]))


def test_missing_data_messages(imdb, tmp_path):
  with pytest.raises(errors.DataError, match="config.data_path is not set.*aclImdb_v1.tar.gz"):
    text.load(_config(None, tmp_path))
  with pytest.raises(errors.DataError, match="nowhere does not exist.*aclImdb"):
    text.load(_config(tmp_path / "nowhere", tmp_path))
  os.rename(os.path.join(imdb, "test", "pos"), os.path.join(imdb, "test", "positive"))
  with pytest.raises(errors.DataError, match=r"test/pos does not exist.*ai.stanford.edu"):
    text.load(_config(imdb, tmp_path))


def test_empty_label_folder_is_an_error(imdb, tmp_path):
  folder = os.path.join(imdb, "train", "neg")
  for name in os.listdir(folder):
    os.remove(os.path.join(folder, name))
  with pytest.raises(errors.DataError, match="neg holds no .txt reviews"):
    text.load(_config(imdb, tmp_path))
