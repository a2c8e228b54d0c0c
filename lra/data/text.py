"""IMDb sentiment classification (LRA "Text"): 2 classes, one review per example.

Reads the standard download as it unpacks, `config.data_path` being the `aclImdb` folder:
`{train,test}/{neg,pos}/<id>_<rating>.txt` (`train/unsup` is ignored). Reviews are UTF-8 and
keep the `<br />` line breaks, as LRA does. Labels: neg 0, pos 1. Two tokenizers:

- `bytes` (LRA): the raw file bytes are the tokens: id = byte + 1, pad 0, 257 ids
  (`common.byte_vocab`). Reviews longer than `max_length` bytes are cut.
- `bpe` (a pretrained Longformer's fine-tuning): RoBERTa's byte-level BPE read from
  `tokenizer_path` (`lra.data.bpe`): `<s> ... </s>`, at most `max_length` ids, each
  the tokenizer's id + 1 so that 0 stays padding.

Splits: 'test' is the 25k test reviews. LRA used that same test set for validation too;
here 'val' is instead carved out of the 25k train reviews by a `config.seed` permutation
(`val_fraction` of them), and 'train' is the rest. Files are read in sorted order, so the
splits depend only on the files and the seed.

Options (`config.data`):
  max_length: 4000   tokens kept per review (the LRA paper's 4K bytes; its repo config used
                     1000).
  val_fraction: 0.1  fraction of the train reviews held out as 'val' (seeded by config.seed).
  tokenizer: bytes   bytes | bpe.
  tokenizer_path:    bpe: the folder holding vocab.json and merges.txt.
"""

import dataclasses
import os

import numpy as np

from lra import data as lra_data
from lra import errors
from lra.data import TaskData
from lra.data import bpe
from lra.data import common

_LABELS = {"neg": 0, "pos": 1}
_EXPECTED = ("the aclImdb folder holding train/{neg,pos}/*.txt and test/{neg,pos}/*.txt "
             "(one UTF-8 review per file)")
_SOURCE = ("Download https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz, "
           "unpack it and set config.data_path to its aclImdb folder.")

TOKENIZERS = ("bytes", "bpe")


def _tokenizer_name(config) -> str:
  tokenizer = common.option(config, "tokenizer", "bytes")
  if tokenizer not in TOKENIZERS:
    raise errors.ConfigError(
        f"config.data.tokenizer must be one of {', '.join(TOKENIZERS)}, got {tokenizer!r}")
  return tokenizer


def _phases(config) -> lra_data.Phases:
  """One phase; checks the tokenizer options before any file is written or read."""
  if _tokenizer_name(config) == "bpe":
    bpe.check_folder(common.option(config, "tokenizer_path", None))
  return lra_data.single_phase(config)


TASK = dataclasses.replace(common.CLASSIFICATION, phases=_phases)


def _read_split(root: str, split: str) -> tuple[list[bytes], np.ndarray]:
  """Returns the file contents and labels of one split folder, neg then pos, files sorted."""
  reviews, labels = [], []
  for label_name, label in _LABELS.items():
    folder = common.require_dir(os.path.join(root, split, label_name), _EXPECTED, _SOURCE)
    names = sorted(n for n in os.listdir(folder) if n.endswith(".txt"))
    if not names:
      raise errors.DataError(f"{folder} holds no .txt reviews; expected {_EXPECTED}. {_SOURCE}")
    for name in names:
      with open(os.path.join(folder, name), "rb") as f:
        reviews.append(f.read())
    labels += [label] * len(names)
  return reviews, np.asarray(labels, dtype=np.int32)


def _tokenizer(config, max_length: int):
  """`(encode, vocab)`: file contents -> token arrays, and the names of the ids."""
  if _tokenizer_name(config) == "bytes":
    encode = lambda reviews: [common.bytes_to_tokens(r, max_length) for r in reviews]
    return encode, common.byte_vocab()
  tokenizer = bpe.Tokenizer(common.option(config, "tokenizer_path", None), max_length)
  # The files are UTF-8; a stray invalid byte becomes U+FFFD rather than failing the load.
  encode = lambda reviews: tokenizer.encode([r.decode("utf-8", "replace") for r in reviews])
  return encode, tokenizer.vocab


def load(config) -> TaskData:
  """Reads IMDb from `config.data_path`; see the module docstring for splits and options."""
  root = common.require_dir(config.data_path, _EXPECTED, _SOURCE)
  max_length = common.option(config, "max_length", 4000)
  val_fraction = common.option(config, "val_fraction", 0.1)
  encode, vocab = _tokenizer(config, max_length)

  train_reviews, train_labels = _read_split(root, "train")
  test_reviews, test_labels = _read_split(root, "test")
  train_tokens, test_tokens = encode(train_reviews), encode(test_reviews)
  train_idx, val_idx = common.seeded_split(len(train_labels), (val_fraction,), config.seed)

  def split(tokens, labels, indices):
    return {"inputs": common.pad_sequences([tokens[i] for i in indices]),
            "targets": labels[indices]}

  return TaskData(
      splits={"train": split(train_tokens, train_labels, train_idx),
              "val": split(train_tokens, train_labels, val_idx),
              "test": split(test_tokens, test_labels, np.arange(len(test_labels)))},
      vocab=vocab,
      num_classes=2)
