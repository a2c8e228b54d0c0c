"""ListOps: a seeded generator of nested list operations and a loader of LRA's TSV files.

An example is an expression such as `[MAX 2 9 [MIN 4 7 ] 0 ]`; its class is the value, a
digit. LRA releases it as `listops-1000/basic_{train,val,test}.tsv`: tab-separated, with the
header `Source<TAB>Target`, the expression stored as the left-nested pairs
`((((op, a), b), ...), ])`, every pair in parentheses. `[MAX 2 9 ]` with its value:

    ( ( ( [MAX 2 ) 9 ) ] )<TAB>9

`generate` writes that layout with LRA's tree distribution, but seeded: the same seed gives
byte-identical files. `load` reads generated and released files alike.

Token ids are fixed (LRA's vocabulary was rebuilt from a Python set on every run, so ids
changed between processes): 0 `<pad>`, 1-10 the digits `0`-`9`, 11 `[MIN`, 12 `[MAX`,
13 `[MED`, 14 `[SM`, 15 `]`. Parentheses carry no information and are dropped, as in LRA.
"""

import dataclasses
import os
import random
import time

from absl import logging
import numpy as np

from lra import errors
from lra.data import TaskData
from lra.data import common

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
DIGITS = tuple(str(d) for d in range(10))
VOCAB = ("<pad>",) + DIGITS + OPERATORS + (END,)
NUM_CLASSES = 10
SPLITS = ("train", "val", "test")

_TOKEN_IDS = {token: i for i, token in enumerate(VOCAB)}
_PARENTHESES = frozenset(("(", ")"))
_HEADER = "Source\tTarget"
# LRA draws a digit with probability 0.75 at every depth below the maximum.
_LEAF_PROBABILITY = 0.75
_EXPECTED = ("a TSV file with the header 'Source<TAB>Target' and one row per example: the "
             "expression, a tab, its value 0-9")
_SOURCE = ("ListOps is published in the LRA release "
           "https://storage.googleapis.com/long-range-arena/lra_release.gz (folder "
           "listops-1000/), or generate it with `python -m experiments.generate_data listops "
           "--out=DIR`; set config.data_path to the folder holding basic_{train,val,test}.tsv.")

TASK = common.CLASSIFICATION


@dataclasses.dataclass(frozen=True)
class Spec:
  """How many examples to draw and from which trees.

  Attributes:
    num_train: examples in the train split.
    num_val: examples in the validation split.
    num_test: examples in the test split.
    max_depth: depth of the deepest digits (the root has depth 1), so operators nest at most
      `max_depth - 1` deep.
    max_args: most arguments of one operator (the fewest is 2).
    min_length: kept trees are longer than this; the length counts operators, digits and
      `]`, not parentheses.
    max_length: kept trees are shorter than this.
  """

  num_train: int
  num_val: int
  num_test: int
  max_depth: int
  max_args: int
  min_length: int
  max_length: int


SIZES = {
    # LRA's generator defaults, the published dataset.
    "paper": Spec(96_000, 2_000, 2_000, max_depth=10, max_args=10, min_length=500,
                  max_length=2000),
    # Enough examples for a small model to learn on a CPU; generates in about 10 s.
    "small": Spec(20_000, 1_000, 1_000, max_depth=6, max_args=10, min_length=100,
                  max_length=512),
    # For tests: generates in about 0.1 s.
    "tiny": Spec(512, 64, 64, max_depth=4, max_args=5, min_length=20, max_length=100),
}


class _TooLong(Exception):
  """Raised inside a tree that has grown to the length limit, which rejects it anyway."""


def _sample_tree(rng: random.Random, spec: Spec) -> tuple[str, int, int] | None:
  """Draws one tree with an operator at the root.

  A digit alone has length 1 and is always rejected (every size has `min_length >= 1`), so
  starting at an operator samples the same distribution of kept trees with fewer draws.

  Returns:
    `(source, length, value)`, `source` in LRA's parenthesised form, or None when the tree
    reached `spec.max_length` (growth stops there: the tree would be rejected).
  """
  length = 0
  # `int(random() * n)` is uniform on range(n) up to float rounding (~1e-16) and several
  # times faster than `randrange`, which took a third of the generation time.
  uniform = rng.random

  def node(depth: int) -> tuple[str, int]:
    nonlocal length
    if depth > 1 and (depth == spec.max_depth or uniform() < _LEAF_PROBABILITY):
      length += 1
      digit = int(uniform() * 10)
      return DIGITS[digit], digit
    length += 2  # The operator and its `]`.
    if length >= spec.max_length:
      raise _TooLong
    num_args = 2 + int(uniform() * (spec.max_args - 1))
    children = [node(depth + 1) for _ in range(num_args)]
    operator = OPERATORS[int(uniform() * len(OPERATORS))]
    # The tree ((((op, a), b), c), ]) written with a pair of parentheses around each pair.
    source = ("( " * (len(children) + 1) + operator + " "
              + " ) ".join(child for child, _ in children) + " ) ] )")
    return source, evaluate(operator, [value for _, value in children])

  try:
    source, value = node(1)
  except _TooLong:
    return None
  if length >= spec.max_length:
    return None
  return source, length, value


def evaluate(operator: str, args: list[int]) -> int:
  """The value of a ListOps operator (`[MIN`, `[MAX`, `[MED`, `[SM`) applied to `args`."""
  if operator == "[MIN":
    return min(args)
  if operator == "[MAX":
    return max(args)
  if operator == "[MED":
    # int(np.median(args)) as in LRA: the middle value, or the floor of the mean of the two.
    ordered = sorted(args)
    middle = len(ordered) // 2
    if len(ordered) % 2:
      return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) // 2
  return sum(args) % 10


def _draw_splits(spec: Spec, counts: dict[str, int],
                 seed: int) -> dict[str, list[tuple[str, int]]]:
  """Draws distinct kept trees for each split, as `(source, value)` rows."""
  rng = random.Random(seed)
  seen = set()
  rows = {}
  drawn = too_short = too_long = duplicates = 0
  start = time.perf_counter()
  # The eval splits are drawn first, so that changing the train count keeps them the same.
  for split in ("val", "test", "train"):
    rows[split] = []
    while len(rows[split]) < counts[split]:
      drawn += 1
      tree = _sample_tree(rng, spec)
      if tree is None:
        too_long += 1
        continue
      source, length, value = tree
      if length <= spec.min_length:
        too_short += 1
      elif source in seen:
        duplicates += 1
      else:
        seen.add(source)
        rows[split].append((source, value))
  logging.info(
      "ListOps: %d examples in %.1fs from %d trees with an operator root (%.1f%% kept; %d "
      "too short, %d too long, %d duplicates)", len(seen), time.perf_counter() - start, drawn,
      100 * len(seen) / drawn, too_short, too_long, duplicates)
  return rows


def generate(out_dir: str, *, size: str, seed: int, num_examples: int | None = None) -> None:
  """Writes `basic_{train,val,test}.tsv` in LRA's release format into `out_dir`.

  Args:
    out_dir: folder to write into; created if missing.
    size: a key of `SIZES`.
    seed: the same seed gives byte-identical files.
    num_examples: number of train examples instead of the size's. Validation and test keep
      the size's counts and are drawn first, so they hold the same examples whatever
      `num_examples` is (and a smaller train split is the start of a larger one).
  """
  if size not in SIZES:
    raise errors.ConfigError(f"unknown ListOps size {size!r}; known sizes: {', '.join(SIZES)}")
  spec = SIZES[size]
  if num_examples is not None and num_examples < 1:
    raise errors.ConfigError(f"num_examples must be at least 1, got {num_examples}")
  counts = {"train": spec.num_train if num_examples is None else num_examples,
            "val": spec.num_val, "test": spec.num_test}
  rows = _draw_splits(spec, counts, seed)
  os.makedirs(out_dir, exist_ok=True)
  for split in SPLITS:
    with open(_split_path(out_dir, split), "w", encoding="utf-8", newline="\n") as f:
      f.write(_HEADER + "\n")
      f.writelines(f"{source}\t{value}\n" for source, value in rows[split])


def load(config) -> TaskData:
  """Reads the three splits from `config.data_path`, or generates them into the cache.

  Reads `config.data_path` (the folder holding `basic_{train,val,test}.tsv`, or None),
  `config.data_cache_dir`, `config.size`, `config.data.max_length` and
  `config.data.generator_seed`. Each split's `inputs` are token ids `[examples, longest]`
  (`common.TOKEN_DTYPE`), cut to `max_length`; `targets` are int32 values 0-9.
  """
  folder = config.data_path
  if folder is None:
    folder = _cached_dataset(config.data_cache_dir, config.size, config.data.generator_seed)
  splits = {}
  for split in SPLITS:
    inputs, targets = _read_split(_split_path(folder, split), config.data.max_length)
    splits[split] = {"inputs": inputs, "targets": targets}
  return TaskData(splits=splits, vocab=list(VOCAB), num_classes=NUM_CLASSES)


def _split_path(folder: str, split: str) -> str:
  return os.path.join(folder, f"basic_{split}.tsv")


def _cached_dataset(cache_dir: str, size: str, seed: int) -> str:
  """Returns the cache folder of a generated dataset, generating it first if missing."""
  if size not in ("small", "tiny"):
    raise errors.DataError(
        f"ListOps size={size} needs config.data_path (only sizes small and tiny are "
        f"generated automatically); expected {_EXPECTED}. {_SOURCE}")
  folder = os.path.join(cache_dir, f"listops_{size}_seed{seed}")
  if not os.path.isdir(folder):
    # Written aside and renamed when complete: an interrupted run leaves no partial dataset.
    with common.atomic_directory(folder) as partial:
      generate(partial, size=size, seed=seed)
  return folder


def _read_split(path: str, max_length: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns token ids `[examples, longest]` and targets `[examples]` of one TSV file."""
  sequences = []
  targets = []
  truncated = 0
  # Universal newlines, because LRA's csv.writer ended rows with \r\n.
  with open(common.require_file(path, _EXPECTED, _SOURCE), encoding="utf-8") as f:
    header = f.readline().rstrip("\n")
    if header != _HEADER:
      raise errors.DataError(
          f"{path}, line 1: expected the header 'Source<TAB>Target', got {header[:80]!r}")
    for line_number, line in enumerate(f, start=2):
      if not line.strip():
        continue
      ids, target = _parse_row(path, line_number, line)
      truncated += len(ids) > max_length
      # An array per row, not a list: 2 bytes a token instead of 8 for the paper's 96,000 rows.
      sequences.append(np.array(ids[:max_length], common.TOKEN_DTYPE))
      targets.append(target)
  if not sequences:
    raise errors.DataError(f"{path} has a header but no examples")

  inputs = common.pad_sequences(sequences)
  logging.info("ListOps %s: %d examples, %d tokens at most; %d cut to max_length=%d", path,
               len(sequences), inputs.shape[1], truncated, max_length)
  return inputs, np.array(targets, np.int32)


def _parse_row(path: str, line_number: int, line: str) -> tuple[list[int], int]:
  """Returns the token ids and the target of one `Source<TAB>Target` row."""
  fields = line.rstrip("\n").split("\t")
  if len(fields) != 2:
    raise errors.DataError(
        f"{path}, line {line_number}: expected 2 tab-separated columns (Source, Target), "
        f"got {len(fields)}")
  source, target_text = fields
  try:
    ids = [_TOKEN_IDS[token] for token in source.split() if token not in _PARENTHESES]
  except KeyError as e:
    raise errors.DataError(
        f"{path}, line {line_number}: unknown token {e.args[0]!r}; ListOps tokens are "
        f"{' '.join(VOCAB[1:])} and parentheses") from None
  if not ids:
    raise errors.DataError(f"{path}, line {line_number}: empty expression")
  try:
    target = int(target_text)
  except ValueError:
    raise errors.DataError(
        f"{path}, line {line_number}: target {target_text!r} is not an integer") from None
  if not 0 <= target < NUM_CLASSES:
    raise errors.DataError(
        f"{path}, line {line_number}: target {target} is outside 0-{NUM_CLASSES - 1}")
  return ids, target


def outermost_operator_prior(data: TaskData) -> dict[str, float]:
  """Accuracy on val and test of predicting, for each outermost operator, the value most
  frequent under it in the training split: what a model scores that reads only the first
  operator of an expression (the level a ListOps model trained from scratch stops at)."""
  operator_ids = np.array([_TOKEN_IDS[op] for op in OPERATORS])

  def outermost(inputs):  # [examples] index into OPERATORS of each row's first operator
    is_operator = np.isin(inputs, operator_ids)
    first = np.argmax(is_operator, axis=1)
    return np.searchsorted(operator_ids, inputs[np.arange(len(inputs)), first])

  train = data.splits["train"]
  counts = np.zeros((len(OPERATORS), NUM_CLASSES), int)
  np.add.at(counts, (outermost(train["inputs"]), train["targets"]), 1)
  guess = counts.argmax(axis=1)
  return {split: float(np.mean(guess[outermost(data.splits[split]["inputs"])]
                               == data.splits[split]["targets"]))
          for split in ("val", "test")}
