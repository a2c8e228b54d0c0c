"""IMDb sentiment classification on bytes (LRA "Text"): 2 classes, one review per example.

Reads the standard download as it unpacks, `config.data_path` being the `aclImdb` folder:
`{train,test}/{neg,pos}/<id>_<rating>.txt` (`train/unsup` is ignored). The raw file bytes,
which are UTF-8 and keep the `<br />` line breaks as LRA does, are the tokens: id =
byte + 1, pad 0, 257 ids (`common.byte_vocab`). Reviews longer than `max_length` bytes are
cut. Labels: neg 0, pos 1.

Splits: 'test' is the 25k test reviews. LRA used that same test set for validation too;
here 'val' is instead carved out of the 25k train reviews by a `config.seed` permutation
(`val_fraction` of them), and 'train' is the rest. Files are read in sorted order, so the
splits depend only on the files and the seed.

Options (`config.data`):
  max_length: 4000   bytes kept per review (the LRA paper's 4K; its repo config used 1000).
  val_fraction: 0.1  fraction of the train reviews held out as 'val' (seeded by config.seed).
"""

import os

import numpy as np

from lra import errors
from lra.data import TaskData
from lra.data import common

_LABELS = {"neg": 0, "pos": 1}
_EXPECTED = ("the aclImdb folder holding train/{neg,pos}/*.txt and test/{neg,pos}/*.txt "
             "(one UTF-8 review per file)")
_SOURCE = ("Download https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz, "
           "unpack it and set config.data_path to its aclImdb folder.")

TASK = common.CLASSIFICATION


def _read_split(root: str, split: str,
                max_length: int) -> tuple[list[np.ndarray], np.ndarray]:
  """Returns the token arrays and labels of one split folder, neg then pos, files sorted."""
  tokens, labels = [], []
  for label_name, label in _LABELS.items():
    folder = common.require_dir(os.path.join(root, split, label_name), _EXPECTED, _SOURCE)
    names = sorted(n for n in os.listdir(folder) if n.endswith(".txt"))
    if not names:
      raise errors.DataError(f"{folder} holds no .txt reviews; expected {_EXPECTED}. {_SOURCE}")
    for name in names:
      with open(os.path.join(folder, name), "rb") as f:
        tokens.append(common.bytes_to_tokens(f.read(), max_length))
    labels += [label] * len(names)
  return tokens, np.asarray(labels, dtype=np.int32)


def load(config) -> TaskData:
  """Reads IMDb from `config.data_path`; see the module docstring for splits and options."""
  root = common.require_dir(config.data_path, _EXPECTED, _SOURCE)
  max_length = common.option(config, "max_length", 4000)
  val_fraction = common.option(config, "val_fraction", 0.1)

  train_tokens, train_labels = _read_split(root, "train", max_length)
  test_tokens, test_labels = _read_split(root, "test", max_length)
  train_idx, val_idx = common.seeded_split(len(train_labels), (val_fraction,), config.seed)

  def split(tokens, labels, indices):
    return {"inputs": common.pad_sequences([tokens[i] for i in indices]),
            "targets": labels[indices]}

  return TaskData(
      splits={"train": split(train_tokens, train_labels, train_idx),
              "val": split(train_tokens, train_labels, val_idx),
              "test": split(test_tokens, test_labels, np.arange(len(test_labels)))},
      vocab=common.byte_vocab(),
      num_classes=2)
