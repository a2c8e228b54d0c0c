"""Tests of the IMDb byte-level loader on a tiny aclImdb folder."""

import os

import numpy as np
import pytest

from lra import errors
import lra.data
from lra.data import PAD_ID
from lra.data import bpe
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


# RoBERTa's byte-level BPE (tokenizer=bpe), with the tiny tokenizer committed beside the
# tiny checkpoint (`fixtures.write_bpe_tokenizer`).
TINY_TOKENIZER = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures",
                              "hf_longformer", "tiny")


def _bpe_config(path, tmp_path, tokenizer_path=TINY_TOKENIZER, **options):
  return _config(path, tmp_path, tokenizer="bpe", tokenizer_path=tokenizer_path, **options)


def test_committed_tiny_tokenizer_is_the_fixture_writers(tmp_path):
  fixtures.write_bpe_tokenizer(tmp_path)
  for name in bpe.FILES:
    with open(tmp_path / name, "rb") as written, \
        open(os.path.join(TINY_TOKENIZER, name), "rb") as committed:
      assert written.read() == committed.read(), name


def test_bpe_tokens_are_roberta_ids_plus_one_between_bos_and_eos(imdb, tmp_path):
  data = text.load(_bpe_config(imdb, tmp_path, max_length=4096))
  vocab = data.vocab
  # <pad>, then the tokenizer's 290 ids in order: RoBERTa's <s> 0, <pad> 1, </s> 2 are
  # task ids 1, 2, 3.
  assert len(vocab) == 291 and vocab[PAD_ID] == "<pad>"
  assert vocab[1:4] == ["<s>", "<pad>", "</s>"] and vocab[-1] == "<mask>"
  inputs = data.splits["test"]["inputs"]
  lengths = (inputs != PAD_ID).sum(axis=1)
  assert inputs.shape[1] == lengths.max()
  for row, n in zip(inputs, lengths):
    assert np.all(row[:n] != PAD_ID) and np.all(row[n:] == PAD_ID)
    assert row[0] == 1 and row[n - 1] == 3  # <s> first, </s> last
  # The first neg test review, "Film test n°0: café awful boring dull.<br /><br />Rated
  # down.", in RoBERTa's byte-level symbols ('Ġ' a space, 'Â°' and 'Ã©' the UTF-8 bytes of
  # '°' and 'é'); the fixture's merges make 'Film' and the sentiment words single tokens.
  names = [vocab[i] for i in inputs[0][:lengths[0]]]
  assert names == [
      "<s>", "Film", "Ġ", "t", "e", "s", "t", "Ġ", "n", "Â", "°", "0", ":", "Ġ", "c", "a", "f",
      "Ã", "©", "Ġawful", "Ġboring", "Ġdull", ".", "<", "b", "r", "Ġ", "/", ">", "<", "b", "r",
      "Ġ", "/", ">", "R", "a", "t", "e", "d", "Ġd", "o", "w", "n", ".", "</s>"]


def test_bpe_truncation_keeps_eos_last(imdb, tmp_path):
  data = text.load(_bpe_config(imdb, tmp_path, max_length=8))
  for split in data.splits.values():
    inputs = split["inputs"]
    assert inputs.shape[1] == 8 and np.all(inputs != PAD_ID)  # every review is longer
    np.testing.assert_array_equal(inputs[:, 0], 1)
    np.testing.assert_array_equal(inputs[:, -1], 3)
  assert [data.vocab[i] for i in data.splits["test"]["inputs"][0]] == [
      "<s>", "Film", "Ġ", "t", "e", "s", "t", "</s>"]


def test_bpe_tokenizer_errors(imdb, tmp_path):
  with pytest.raises(errors.ConfigError, match="tokenizer_path is not set.*config.init_from"):
    text.load(_bpe_config(imdb, tmp_path, tokenizer_path=None))
  with pytest.raises(errors.ConfigError, match="lacks vocab.json and merges.txt"):
    text.load(_bpe_config(imdb, tmp_path, tokenizer_path=str(tmp_path)))
  with pytest.raises(errors.ConfigError, match="must be one of bytes, bpe, got 'wordpiece'"):
    text.TASK.phases(_config(imdb, tmp_path, tokenizer="wordpiece"))
  (tmp_path / "broken").mkdir()
  (tmp_path / "broken" / "vocab.json").write_text("{not json")
  (tmp_path / "broken" / "merges.txt").write_text("#version: 0.2\n")
  with pytest.raises(errors.ConfigError, match="cannot read the BPE tokenizer of .*broken"):
    text.load(_bpe_config(imdb, tmp_path, tokenizer_path=str(tmp_path / "broken")))
  with pytest.raises(errors.ConfigError, match="max_length must leave room for <s> and </s>"):
    text.load(_bpe_config(imdb, tmp_path, max_length=1))
