"""Tests of the AAN retrieval loader on tiny new_aan_pairs TSVs."""

import os

import numpy as np
import pytest

from lra import errors
import lra.data
from lra.data import PAD_ID
from lra.data import retrieval
from tests.data import fixtures


@pytest.fixture
def aan(tmp_path):
  return fixtures.write_aan(tmp_path, num_pairs=24)


def _config(path, tmp_path, **options):
  return fixtures.data_config("retrieval", path, tmp_path / "cache", **options)


def _write_tsv(folder, split, lines):
  with open(os.path.join(folder, f"new_aan_pairs.{split}.tsv"), "w", encoding="utf-8") as f:
    f.writelines(lines)


def test_splits_fields_and_labels(aan, tmp_path):
  data = lra.data.load(_config(aan, tmp_path))
  assert set(data.splits) == {"train", "val", "test"}
  assert data.num_classes == 2 and len(data.vocab) == 257
  for split in data.splits.values():
    assert set(split) == {"inputs1", "inputs2", "targets"}
    assert split["inputs1"].shape == split["inputs2"].shape
    assert split["inputs1"].shape[0] == 24
    # Labels written as 1, 0, 1.0, 0.0 in turn.
    np.testing.assert_array_equal(split["targets"], [1, 0] * 12)
    assert split["targets"].dtype == np.int32


def test_bytes_literals_and_plain_text_are_decoded(aan, tmp_path):
  split = retrieval.load(_config(aan, tmp_path)).splits["val"]
  for i in range(24):
    row1 = split["inputs1"][i]
    # Each document is the bytes its literal stands for, escapes decoded.
    topic = fixtures.token_bytes(row1).split(b"We study ")[1].split(b" ")[0].decode()
    assert fixtures.token_bytes(row1) == fixtures.aan_text(i, topic)
    assert "\u00ef".encode() in fixtures.token_bytes(split["inputs2"][i])
  # Row 4's second text is written as plain UTF-8, not as a bytes literal.
  plain = fixtures.aan_text(4, "tagging").replace(b"\t", b" ")
  assert fixtures.token_bytes(split["inputs2"][4]) == plain


def test_padding_and_truncation(aan, tmp_path):
  split = retrieval.load(_config(aan, tmp_path)).splits["train"]
  lengths = [(split[f] != PAD_ID).sum(axis=1) for f in ("inputs1", "inputs2")]
  assert split["inputs1"].shape[1] == max(l.max() for l in lengths)
  short = retrieval.load(_config(aan, tmp_path, max_length=10)).splits["train"]
  assert short["inputs1"].shape == (24, 10)
  assert fixtures.token_bytes(short["inputs1"][0]) == b"We study p"


def test_malformed_rows_name_file_and_line(aan, tmp_path):
  with open(os.path.join(aan, "new_aan_pairs.eval.tsv"), encoding="utf-8") as f:
    good = f.readlines()
  cases = {
      "expected 5 tab-separated fields": "1\tonly\tfour\tfields\n",
      "expected a label 0 or 1, got '2'": "2\ta\tb\tb'x'\tb'y'\n",
      "malformed bytes literal": "1\ta\tb\tb'bad \\x escape'\tb'y'\n",
  }
  for message, bad_line in cases.items():
    _write_tsv(aan, "eval", good[:2] + [bad_line])
    with pytest.raises(errors.DataError, match=f"new_aan_pairs.eval.tsv:3: {message}"):
      retrieval.load(_config(aan, tmp_path))


def test_missing_data_messages(aan, tmp_path):
  with pytest.raises(errors.DataError, match="config.data_path is not set.*lra_release.gz"):
    retrieval.load(_config(None, tmp_path))
  os.remove(os.path.join(aan, "new_aan_pairs.test.tsv"))
  with pytest.raises(errors.DataError,
                     match="new_aan_pairs.test.tsv does not exist.*tsv_data"):
    retrieval.load(_config(aan, tmp_path))
