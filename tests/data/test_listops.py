"""Tests of the ListOps generator and loader.

Labels and the parenthesised layout are checked against a parser and an evaluator written
here independently of the generator.
"""

import logging
import os
import pathlib

import ml_collections
import numpy as np
import pytest

from lra import data
from lra import errors
from lra.data import common
from lra.data import listops

_TINY = listops.SIZES["tiny"]
_REDUCE = {
    "[MIN": min,
    "[MAX": max,
    "[MED": lambda args: int(np.median(args)),
    "[SM": lambda args: sum(args) % 10,
}


def _tokens(source):
  return [token for token in source.split() if token not in ("(", ")")]


def _parse(tokens):
  """Returns the tree of a token list: a digit int, or `(operator, [children])`."""
  stack = [("root", [])]
  for token in tokens:
    if token in _REDUCE:
      stack.append((token, []))
    elif token == "]":
      finished = stack.pop()
      stack[-1][1].append(finished)
    else:
      stack[-1][1].append(int(token))
  assert len(stack) == 1, "unclosed operator"
  (tree,) = stack[0][1]
  return tree


def _value(tree):
  if isinstance(tree, int):
    return tree
  operator, children = tree
  return _REDUCE[operator]([_value(child) for child in children])


def _digit_depth(tree):
  """Depth of the deepest digit, the root at depth 1."""
  if isinstance(tree, int):
    return 1
  return 1 + max(_digit_depth(child) for child in tree[1])


def _arities(tree):
  if isinstance(tree, int):
    return []
  return [len(tree[1])] + [a for child in tree[1] for a in _arities(child)]


def _lra_source(tree):
  """LRA's string: the tree as nested pairs ((op, c1), c2)..., then `]`, each in parens."""

  def as_pairs(node):
    if isinstance(node, int):
      return str(node)
    operator, children = node
    pair = (operator, as_pairs(children[0]))
    for child in children[1:]:
      pair = (pair, as_pairs(child))
    return (pair, "]")

  def to_string(pair):
    if isinstance(pair, str):
      return pair
    return f"( {to_string(pair[0])} {to_string(pair[1])} )"

  return to_string(as_pairs(tree))


def _rows(folder, split):
  with open(os.path.join(folder, f"basic_{split}.tsv"), encoding="utf-8") as f:
    lines = f.read().splitlines()
  assert lines[0] == "Source\tTarget"
  return [(source, int(target)) for source, target in (line.split("\t") for line in lines[1:])]


def _config(*, data_path=None, cache_dir="", size="tiny", max_length=100, seed=0):
  return ml_collections.ConfigDict({
      "task": "listops",
      "data_path": data_path,
      "data_cache_dir": cache_dir,
      "size": size,
      "data": {"max_length": max_length, "generator_seed": seed},
  })


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp("listops_tiny")
  listops.generate(str(folder), size="tiny", seed=0)
  return folder


def test_split_sizes(tiny_dir):
  assert [len(_rows(tiny_dir, split)) for split in listops.SPLITS] == [
      _TINY.num_train, _TINY.num_val, _TINY.num_test]


def test_labels_match_independent_evaluator(tiny_dir):
  for split in listops.SPLITS:
    for source, target in _rows(tiny_dir, split):
      assert _value(_parse(_tokens(source))) == target, source
  # All ten classes occur, so the labels are not stuck on a few values.
  assert {target for _, target in _rows(tiny_dir, "train")} == set(range(10))


def test_median_floors_the_mean_of_the_two_middle_values():
  # LRA's int(np.median): the two middle values 3 and 4 give 3, not 4.
  assert listops.evaluate("[MED", [4, 1, 3, 9]) == 3
  assert listops.evaluate("[MED", [7, 1, 5]) == 5


def test_source_is_lra_left_nested_pairs(tiny_dir):
  for source, _ in _rows(tiny_dir, "train"):
    assert source == _lra_source(_parse(_tokens(source)))


def test_trees_respect_size_limits(tiny_dir):
  for split in listops.SPLITS:
    for source, _ in _rows(tiny_dir, split):
      tree = _parse(_tokens(source))
      assert _TINY.min_length < len(_tokens(source)) < _TINY.max_length
      assert _digit_depth(tree) <= _TINY.max_depth
      assert all(2 <= a <= _TINY.max_args for a in _arities(tree))


def test_no_duplicates_within_or_across_splits(tiny_dir):
  sources = [source for split in listops.SPLITS for source, _ in _rows(tiny_dir, split)]
  assert len(set(sources)) == len(sources)


def test_same_seed_gives_identical_files(tiny_dir, tmp_path):
  listops.generate(str(tmp_path / "same"), size="tiny", seed=0)
  listops.generate(str(tmp_path / "other"), size="tiny", seed=1)
  for split in listops.SPLITS:
    name = f"basic_{split}.tsv"
    expected = (tiny_dir / name).read_bytes()
    assert (tmp_path / "same" / name).read_bytes() == expected
    assert (tmp_path / "other" / name).read_bytes() != expected


def test_num_examples_changes_only_train(tiny_dir, tmp_path):
  listops.generate(str(tmp_path), size="tiny", seed=0, num_examples=100)
  assert _rows(tmp_path, "train") == _rows(tiny_dir, "train")[:100]
  for split in ("val", "test"):
    assert _rows(tmp_path, split) == _rows(tiny_dir, split)


@pytest.mark.parametrize("options", [{"size": "huge"}, {"size": "tiny", "num_examples": 0}])
def test_generate_rejects_bad_options(tmp_path, options):
  with pytest.raises(errors.ConfigError):
    listops.generate(str(tmp_path), seed=0, **options)


def test_vocabulary_ids_are_fixed():
  assert listops.VOCAB == ("<pad>", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "[MIN",
                           "[MAX", "[MED", "[SM", "]")
  assert listops.VOCAB[data.PAD_ID] == "<pad>"


def test_load_round_trips_generated_files(tiny_dir):
  task = data.load(_config(data_path=str(tiny_dir)))
  assert task.vocab == list(listops.VOCAB)
  assert task.num_classes == 10
  for split in listops.SPLITS:
    rows = _rows(tiny_dir, split)
    inputs, targets = task.splits[split]["inputs"], task.splits[split]["targets"]
    assert inputs.dtype == common.TOKEN_DTYPE and targets.dtype == np.int32
    lengths = (inputs != data.PAD_ID).sum(axis=1)
    assert inputs.shape == (len(rows), lengths.max())
    np.testing.assert_array_equal(targets, [target for _, target in rows])
    for ids, length, (source, _) in zip(inputs, lengths, rows):
      assert not ids[length:].any(), "padding must be on the right"
      assert [task.vocab[i] for i in ids[:length]] == _tokens(source)


def test_loads_hand_written_release_file(tmp_path, caplog):
  # As LRA's csv.writer wrote them: \r\n line ends; [SM 3 [MIN 4 7 ] 5 ] = 12 mod 10 = 2.
  rows = ["Source\tTarget", "( ( ( [MAX 2 ) 9 ) ] )\t9",
          "( ( ( ( [SM 3 ) ( ( ( [MIN 4 ) 7 ) ] ) ) 5 ) ] )\t2"]
  for split in listops.SPLITS:
    (tmp_path / f"basic_{split}.tsv").write_bytes(("\r\n".join(rows) + "\r\n").encode())

  caplog.set_level(logging.INFO)
  task = listops.load(_config(data_path=str(tmp_path), max_length=6))

  np.testing.assert_array_equal(task.splits["test"]["inputs"],
                                [[12, 3, 10, 15, 0, 0], [14, 4, 11, 5, 8, 15]])
  np.testing.assert_array_equal(task.splits["test"]["targets"], [9, 2])
  assert "1 cut to max_length=6" in caplog.text


def _write_splits(folder, train_text):
  for split in listops.SPLITS:
    text = train_text if split == "train" else "Source\tTarget\n( ( [MAX 2 ) ] )\t2\n"
    (folder / f"basic_{split}.tsv").write_text(text)


def test_missing_file_says_what_and_where(tmp_path):
  with pytest.raises(errors.DataError) as raised:
    listops.load(_config(data_path=str(tmp_path)))
  message = str(raised.value)
  assert str(tmp_path / "basic_train.tsv") in message
  for expected in ("Source<TAB>Target", "lra_release.gz", "listops-1000/",
                   "python -m experiments.generate_data listops"):
    assert expected in message


@pytest.mark.parametrize("bad_row, expected", [
    ("( ( [MAX 2 ) ] )\t2\textra", "expected 2 tab-separated columns"),
    ("( ( [MAX 2 ) ] )", "expected 2 tab-separated columns"),
    ("( ( [MAX 2 ) ] )\tfive", "target 'five' is not an integer"),
    ("( ( [MAX 2 ) ] )\t10", "target 10 is outside 0-9"),
    ("( ( [MAX 2 ) ] )\t-1", "target -1 is outside 0-9"),
    ("( ( [FIRST 2 ) ] )\t2", "unknown token '[FIRST'"),
])
def test_malformed_row_names_file_and_line(tmp_path, bad_row, expected):
  _write_splits(tmp_path, f"Source\tTarget\n( ( [MIN 4 ) ] )\t4\n{bad_row}\n")
  with pytest.raises(errors.DataError) as raised:
    listops.load(_config(data_path=str(tmp_path)))
  assert f"{tmp_path / 'basic_train.tsv'}, line 3: {expected}" in str(raised.value)


def test_wrong_header_names_file(tmp_path):
  _write_splits(tmp_path, "label\tid1\tid2\n1\ta\tb\n")
  with pytest.raises(errors.DataError, match="basic_train.tsv, line 1: expected the header"):
    listops.load(_config(data_path=str(tmp_path)))


def test_generates_into_cache_once(tmp_path, monkeypatch):
  config = _config(cache_dir=str(tmp_path), seed=3)
  first = listops.load(config)
  assert os.listdir(tmp_path) == ["listops_tiny_seed3"]

  def fail(*args, **kwargs):
    raise AssertionError("the cached dataset should have been reused")

  monkeypatch.setattr(listops, "generate", fail)
  second = listops.load(config)
  for split in listops.SPLITS:
    np.testing.assert_array_equal(first.splits[split]["inputs"], second.splits[split]["inputs"])


def test_interrupted_generation_leaves_no_dataset(tmp_path, monkeypatch):

  def interrupted(out_dir, **kwargs):
    (pathlib.Path(out_dir) / "basic_train.tsv").write_text("Source\tTarget\n")
    raise KeyboardInterrupt

  monkeypatch.setattr(listops, "generate", interrupted)
  with pytest.raises(KeyboardInterrupt):
    listops.load(_config(cache_dir=str(tmp_path)))
  assert not os.listdir(tmp_path)


def test_paper_size_needs_data_path(tmp_path):
  with pytest.raises(errors.DataError, match="size=paper needs config.data_path"):
    listops.load(_config(cache_dir=str(tmp_path), size="paper"))


def test_outermost_operator_prior_predicts_each_operators_most_frequent_value():
  def rows(*sources):
    ids = [[listops._TOKEN_IDS[t] for t in s.split() if t not in "()"] for s in sources]
    width = max(map(len, ids))
    return np.array([row + [data.PAD_ID] * (width - len(row)) for row in ids])

  train = rows("[MAX 1 [MIN 2 3 ] ]", "[MAX 4 5 ]", "[MAX 6 7 ]", "[MIN [MAX 1 2 ] 9 ]")
  held_out = rows("[MAX 0 [MIN 1 1 ] ]", "[MIN 3 [MAX 5 5 ] ]")
  splits = {"train": {"inputs": train, "targets": np.array([7, 7, 5, 2])},
            "val": {"inputs": held_out, "targets": np.array([7, 2])},
            "test": {"inputs": held_out, "targets": np.array([1, 2])}}
  task_data = data.TaskData(splits=splits, vocab=list(listops.VOCAB), num_classes=10)
  # MAX -> 7 (twice in train), MIN -> 2; the nested operators do not count.
  assert listops.outermost_operator_prior(task_data) == {"val": 1.0, "test": 0.5}
