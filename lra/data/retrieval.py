"""AAN document matching on bytes (LRA "Retrieval"): do two papers cite one another?

Reads `new_aan_pairs.{train,eval,test}.tsv` from `config.data_path` (in the LRA release:
`lra_release/lra_release/tsv_data`) into the splits 'train', 'val' and 'test'. Each line
is one pair, tab separated, with no header row: label, id1, id2, text1, text2. The label is
a number, `1` or `1.0`; the texts are Python bytes literals (`b'We study ...'`, as written
by `repr`), decoded back to their bytes; a text that is not such a literal is taken as
plain UTF-8.

Each document becomes byte tokens as in the Text task (id = byte + 1, pad 0, 257 ids),
cut to `max_length`. Fields: `inputs1`, `inputs2` (both padded to one length, the longest
document of the split, so both towers of a dual encoder see one shape) and `targets`.

Options (`config.data`):
  max_length: 4000  bytes kept per document (LRA: 4000 for each of the two).
"""

import ast
import os

import numpy as np

from lra import errors
from lra.data import TaskData
from lra.data import common

_FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv",
          "test": "new_aan_pairs.test.tsv"}
_EXPECTED = ("the folder holding new_aan_pairs.{train,eval,test}.tsv (tab separated, no "
             "header: label, id1, id2, text1, text2)")
_SOURCE = ("AAN is published in the LRA release "
           "https://storage.googleapis.com/long-range-arena/lra_release.gz; unpack it and set "
           "config.data_path to lra_release/lra_release/tsv_data.")

TASK = common.CLASSIFICATION


def _text_bytes(field: str, where: str) -> bytes:
  """Returns the bytes of a text field: a bytes literal, or else plain text as UTF-8."""
  if len(field) >= 3 and field[0] == "b" and field[1] in "'\"" and field[-1] == field[1]:
    try:
      value = ast.literal_eval(field)
    except (SyntaxError, ValueError) as e:
      raise errors.DataError(f"{where}: malformed bytes literal ({e})") from None
    if isinstance(value, bytes):
      return value
  return field.encode("utf-8")


def _read_pairs(path: str, max_length: int) -> dict[str, np.ndarray]:
  """Returns the fields of one split file."""
  docs1, docs2, labels = [], [], []
  # Binary mode: only LF ends a row (a stray CR inside plain text stays in its field), and a
  # line that is not UTF-8 can be reported with its number.
  with open(path, "rb") as f:
    for line_number, raw_line in enumerate(f, start=1):
      where = f"{path}:{line_number}"
      try:
        line = raw_line.decode("utf-8").rstrip("\n").removesuffix("\r")
      except UnicodeDecodeError as e:
        raise errors.DataError(f"{where}: not UTF-8 text ({e})") from None
      if not line:
        continue
      fields = line.split("\t")
      if len(fields) != 5:
        raise errors.DataError(
            f"{where}: expected 5 tab-separated fields (label, id1, id2, text1, text2), "
            f"got {len(fields)}")
      labels.append(common.parse_binary_label(fields[0], where))
      docs1.append(common.bytes_to_tokens(_text_bytes(fields[3], where), max_length))
      docs2.append(common.bytes_to_tokens(_text_bytes(fields[4], where), max_length))
  if not labels:
    raise errors.DataError(f"{path} holds no pairs; expected {_EXPECTED}. {_SOURCE}")
  length = max(max(len(d) for d in docs1), max(len(d) for d in docs2))
  return {"inputs1": common.pad_sequences(docs1, length),
          "inputs2": common.pad_sequences(docs2, length),
          "targets": np.asarray(labels, dtype=np.int32)}


def load(config) -> TaskData:
  """Reads AAN from `config.data_path`; see the module docstring for the format."""
  folder = common.require_dir(config.data_path, _EXPECTED, _SOURCE)
  max_length = common.option(config, "max_length", 4000)
  splits = {}
  for split, name in _FILES.items():
    path = common.require_file(os.path.join(folder, name), _EXPECTED, _SOURCE)
    splits[split] = _read_pairs(path, max_length)
  return TaskData(splits=splits, vocab=common.byte_vocab(), num_classes=2)
