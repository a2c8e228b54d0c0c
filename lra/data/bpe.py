"""RoBERTa's byte-level BPE tokenizer, read from a HuggingFace folder's `vocab.json` and
`merges.txt` with the `tokenizers` package, as task token ids.

Texts are encoded as HF's `RobertaTokenizerFast` (the tokenizer of the Longformer
checkpoints) encodes them with `truncation=True, max_length=max_length`: byte-level
pre-tokenization without a prefix space, then `<s> ... </s>`, the text cut so that the
whole sequence holds at most `max_length` ids. Special tokens of the vocabulary (`<s>`,
`</s>`, `<pad>`, `<unk>`, `<mask>`) written in a text are those tokens, as in HF.

Task ids are the tokenizer's plus `PRETRAINED_ID_SHIFT` (1), so that `PAD_ID` (0) is
padding, never RoBERTa's `<s>`; the vocabulary saved with a run is `<pad>` followed by the
tokenizer's tokens in id order.
"""

import os

import numpy as np

from lra import errors
from lra.data import common
from lra.tokens import PRETRAINED_ID_SHIFT

FILES = ("vocab.json", "merges.txt")
BOS, EOS = "<s>", "</s>"
_SPECIAL_TOKENS = (BOS, "<pad>", EOS, "<unk>", "<mask>")


def check_folder(path) -> str:
  """Returns `path` if it holds `vocab.json` and `merges.txt`, else raises `ConfigError`."""
  if not path:
    raise errors.ConfigError(
        "config.data.tokenizer_path is not set (it follows config.init_from): set "
        "--config.init_from to the HuggingFace Longformer folder, which holds config.json, "
        "model.safetensors, vocab.json and merges.txt")
  missing = [name for name in FILES if not os.path.isfile(os.path.join(path, name))]
  if missing:
    found = sorted(os.listdir(path)) if os.path.isdir(path) else "no such folder"
    raise errors.ConfigError(
        f"the tokenizer folder {path} lacks {' and '.join(missing)} (found: {found}); point "
        f"at a folder with RoBERTa's byte-level BPE files, e.g. a download of "
        f"allenai/longformer-base-4096 (huggingface-cli download "
        f"allenai/longformer-base-4096 --local-dir longformer-base-4096)")
  return os.fspath(path)


class Tokenizer:
  """Texts -> task token ids; see the module docstring."""

  def __init__(self, path, max_length: int):
    # Imported here: only the BPE tasks need the package.
    import tokenizers  # pylint: disable=g-import-not-at-top
    from tokenizers import pre_tokenizers  # pylint: disable=g-import-not-at-top
    from tokenizers import processors  # pylint: disable=g-import-not-at-top

    path = check_folder(path)
    try:
      tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(
          *(os.path.join(path, name) for name in FILES)))
    except Exception as e:  # tokenizers raises plain Exceptions for unreadable files
      raise errors.ConfigError(
          f"cannot read the BPE tokenizer of {path} ({e}); vocab.json must map tokens to "
          f"ids and merges.txt hold one merge per line, as RoBERTa's do") from e
    ids = {token: tokenizer.token_to_id(token) for token in _SPECIAL_TOKENS}
    if ids[BOS] is None or ids[EOS] is None:
      raise errors.ConfigError(
          f"{os.path.join(path, 'vocab.json')} has no {BOS} or {EOS} token: not RoBERTa's "
          f"byte-level BPE vocabulary")
    if max_length < 2:
      raise errors.ConfigError(
          f"config.data.max_length must leave room for {BOS} and {EOS}, got {max_length}")
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.post_processor = processors.RobertaProcessing(
        (EOS, ids[EOS]), (BOS, ids[BOS]), add_prefix_space=False)
    tokenizer.add_special_tokens([token for token, i in ids.items() if i is not None])
    tokenizer.enable_truncation(max_length)
    self.size = tokenizer.get_vocab_size()
    if self.size + PRETRAINED_ID_SHIFT > np.iinfo(common.TOKEN_DTYPE).max + 1:
      raise errors.ConfigError(
          f"the tokenizer of {path} has {self.size} ids; task arrays hold at most "
          f"{np.iinfo(common.TOKEN_DTYPE).max} (common.TOKEN_DTYPE)")
    self._tokenizer = tokenizer

  @property
  def vocab(self) -> list[str]:
    """`<pad>`, then the tokenizer's tokens in id order (the names of the task ids)."""
    return ["<pad>"] + [self._tokenizer.id_to_token(i) for i in range(self.size)]

  def encode(self, texts: list[str]) -> list[np.ndarray]:
    """The task ids of each text, `<s>` first and `</s>` last; `TOKEN_DTYPE` arrays."""
    return [np.asarray(encoding.ids, common.TOKEN_DTYPE) + PRETRAINED_ID_SHIFT
            for encoding in self._tokenizer.encode_batch(texts)]
