"""Writers of tiny datasets in each task's real on-disk layout, for loader and end-to-end tests.

Each `write_*` function writes under `root` and returns the folder that `config.data_path`
should name. The labels are easy to learn from the content (sentiment words, shared topic
words, brightness, a bright square), so end-to-end tests can also check that training
moves.
"""

import json
import os
import pickle

import ml_collections
import numpy as np
from PIL import Image

from lra.data import PAD_ID

_POSITIVE_WORDS = ("great", "wonderful", "moving", "superb")
_NEGATIVE_WORDS = ("awful", "boring", "dull", "terrible")
_TOPICS = ("parsing", "translation", "retrieval", "summarization", "tagging", "speech")


def data_config(task: str, data_path, cache_dir, *, size: str = "tiny", seed: int = 0,
                **options) -> ml_collections.ConfigDict:
  """Returns the config fields a data loader reads; `options` go into `config.data`."""
  return ml_collections.ConfigDict({
      "task": task,
      "data_path": None if data_path is None else os.fspath(data_path),
      "data_cache_dir": os.fspath(cache_dir),
      "size": size,
      "seed": seed,
      "data": options,
  })


def token_bytes(row: np.ndarray) -> bytes:
  """Returns the bytes that a row of byte tokens stands for, padding dropped."""
  return bytes((row[row != PAD_ID] - 1).astype(np.uint8))


def _review(split: str, index: int, positive: bool) -> str:
  """A review whose words give its label, of a length that varies with `index`."""
  words = _POSITIVE_WORDS if positive else _NEGATIVE_WORDS
  body = " ".join(words[(index + k) % len(words)] for k in range(3 + 5 * (index % 4)))
  # Non-ASCII text and HTML breaks, as in the real reviews.
  verdict = "up" if positive else "down"
  return f"Film {split} n\u00b0{index}: caf\u00e9 {body}.<br /><br />Rated {verdict}."


def write_imdb(root, num_reviews: int = 24) -> str:
  """Writes `aclImdb/` with `num_reviews` reviews in each of train and test, half positive.

  Like the download it also holds an unlabelled `train/unsup/` review and files beside
  the review folders, which loaders must ignore.
  """
  base = os.path.join(root, "aclImdb")
  for split in ("train", "test"):
    for label_name in ("neg", "pos"):
      os.makedirs(os.path.join(base, split, label_name))
    for i in range(num_reviews):
      positive = i % 2 == 1
      rating = 7 + i % 4 if positive else 1 + i % 4
      name = f"{i}_{rating}.txt"
      with open(os.path.join(base, split, "pos" if positive else "neg", name), "w",
                encoding="utf-8") as f:
        f.write(_review(split, i, positive))
    with open(os.path.join(base, split, "urls_pos.txt"), "w") as f:
      f.write("http://www.imdb.com/title/tt0000000/usercomments\n")
  os.makedirs(os.path.join(base, "train", "unsup"))
  with open(os.path.join(base, "train", "unsup", "0_0.txt"), "w") as f:
    f.write("An unlabelled review.")
  with open(os.path.join(base, "imdb.vocab"), "w") as f:
    f.write("the\nand\n")
  return base


# RoBERTa's special tokens and their ids; `<mask>` comes last, as in RoBERTa's vocabulary.
BPE_SPECIAL_IDS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
# Words of the IMDb fixture that the tiny BPE merges into one token each ('Ġ': the space
# before a word in byte-level BPE).
BPE_WORDS = ("\u0120great", "\u0120awful", "\u0120superb", "\u0120dull", "\u0120boring",
             "Film")


def write_bpe_tokenizer(folder) -> str:
  """Writes a tiny byte-level BPE in RoBERTa's format: `vocab.json` (its special tokens,
  the 256 byte symbols, the merged prefixes of `BPE_WORDS`, `<mask>`: 290 ids) and
  `merges.txt` (merging each word left to right). Deterministic, so the committed copy in
  `tests/fixtures/hf_longformer/tiny/` (vocabulary 300) is this function's output.

  Returns:
    `folder`.
  """
  from tokenizers import pre_tokenizers  # pylint: disable=g-import-not-at-top

  vocab = dict(BPE_SPECIAL_IDS)
  for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
    vocab[symbol] = len(vocab)
  merges = []
  for word in BPE_WORDS:
    for end in range(2, len(word) + 1):
      vocab[word[:end]] = len(vocab)
      merges.append(f"{word[:end - 1]} {word[end - 1]}")
  vocab["<mask>"] = len(vocab)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
  return os.fspath(folder)


def aan_text(index: int, topic: str) -> bytes:
  """A paper abstract about `topic`, with quotes, a tab and UTF-8 to exercise escaping."""
  return (f"We study {topic} ({index}). Results \"improve\" the author's\tbaseline on "
          f"{topic} \u2013 na\u00efvely.").encode("utf-8")


def write_aan(root, num_pairs: int = 24) -> str:
  """Writes `new_aan_pairs.{train,eval,test}.tsv` with `num_pairs` pairs each.

  Texts are bytes literals as in the LRA release, except every fifth second document,
  written as plain text; labels alternate between the spellings 1, 0, 1.0 and 0.0. A
  positive pair shares its topic word.

  Returns:
    The folder holding the three files.
  """
  folder = os.path.join(root, "tsv_data")
  os.makedirs(folder)
  for split in ("train", "eval", "test"):
    with open(os.path.join(folder, f"new_aan_pairs.{split}.tsv"), "w", encoding="utf-8") as f:
      for i in range(num_pairs):
        label = ("1", "0", "1.0", "0.0")[i % 4]
        topic1 = _TOPICS[i % len(_TOPICS)]
        topic2 = topic1 if float(label) else _TOPICS[(i + 1) % len(_TOPICS)]
        text1 = repr(aan_text(i, topic1))
        text2 = aan_text(i, topic2)
        text2 = text2.decode("utf-8").replace("\t", " ") if i % 5 == 4 else repr(text2)
        f.write(f"{label}\tpaper{i}a\tpaper{i}b\t{text1}\t{text2}\n")
  return folder


def cifar_images(num_images: int, seed: int) -> tuple[np.ndarray, list[int]]:
  """Returns uint8 `[N, 3072]` CIFAR rows and labels; brightness grows with the label.

  The first image is all black, so grey level 0 occurs.
  """
  rng = np.random.default_rng(seed)
  labels = [i % 10 for i in range(num_images)]
  base = np.asarray(labels, dtype=np.int32)[:, None] * 25
  images = np.clip(base + rng.integers(0, 30, size=(num_images, 3072)), 0, 255)
  images[0] = 0
  return images.astype(np.uint8), labels


def write_cifar(root, num_train: int = 50, num_test: int = 10) -> str:
  """Writes `cifar-10-batches-py/` with `num_train` images over the 5 train batches.

  Returns:
    The `cifar-10-batches-py` folder.
  """
  folder = os.path.join(root, "cifar-10-batches-py")
  os.makedirs(folder)
  per_batch = num_train // 5
  files = [(f"data_batch_{b + 1}", per_batch, b) for b in range(5)]
  for name, count, seed in files + [("test_batch", num_test, 5)]:
    images, labels = cifar_images(count, seed)
    with open(os.path.join(folder, name), "wb") as f:
      pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": images,
                   b"filenames": [b"img%d.png" % i for i in range(count)]}, f)
  with open(os.path.join(folder, "batches.meta"), "wb") as f:
    pickle.dump({b"label_names": [b"class%d" % i for i in range(10)]}, f)
  return folder


def pathfinder_image(index: int, label: int, resolution: int) -> np.ndarray:
  """Returns a uint8 image: black, with a bright square when `label` is 1.

  Dim marks make the image of each `index` below `resolution**2` unique.
  """
  image = np.zeros((resolution, resolution), dtype=np.uint8)
  image[index % resolution, 8:] = 60
  image[-1, index // resolution] = 120
  if label:
    image[2:6, 2:6] = 255
  return image


def write_pathfinder(root, num_images: int = 40, resolution: int = 32,
                     folder: str = "curv_contour_length_14") -> str:
  """Writes a `pathfinderNN/` folder holding `folder/{metadata/0.npy,imgs/0/*.png}`.

  Labels alternate 0, 1; metadata lines carry the extra numeric fields of the release.

  Returns:
    The pathfinderNN folder.
  """
  base = os.path.join(root, f"pathfinder{resolution}")
  images_dir = os.path.join(base, folder, "imgs", "0")
  os.makedirs(images_dir)
  os.makedirs(os.path.join(base, folder, "metadata"))
  lines = []
  for i in range(num_images):
    label = i % 2
    Image.fromarray(pathfinder_image(i, label, resolution)).save(
        os.path.join(images_dir, f"sample_{i}.png"))
    lines.append(f"imgs/0 sample_{i}.png {i} {label} 14 1.5 2\n")
  with open(os.path.join(base, folder, "metadata", "0.npy"), "w") as f:
    f.writelines(lines)
  return base


_COMMON_WORDS = ("the of and to in a is that for it as was with be by on not he this are or "
                 "his from at which but have an they you were her she there been one all we "
                 "their").split()


def write_text(root, num_words: int = 6000, seed: int = 0) -> str:
  """A character-level LM text file of random common words (about 4 bytes per word)."""
  os.makedirs(root, exist_ok=True)
  path = os.path.join(root, "text.txt")
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    f.write(" ".join(rng.choice(_COMMON_WORDS, num_words)) + "\n")
  return path
