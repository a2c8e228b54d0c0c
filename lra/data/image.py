"""Grey-level CIFAR-10 as sequences of 1024 pixels (LRA "Image"): 10 classes.

Reads the python version of CIFAR-10 as it unpacks, `config.data_path` being the
`cifar-10-batches-py` folder: the pickles `data_batch_1` .. `data_batch_5` (50k train
images) and `test_batch` (10k), each a dict with bytes keys, `b'data'` uint8
`[N, 3072]` (the red, then green, then blue 32x32 plane, row-major) and `b'labels'`.
The files are pickles by design of the dataset: load only a copy you trust.

Colour becomes grey as LRA's `tf.image.rgb_to_grayscale` computes it: with x = RGB / 255
in float32, grey = trunc((0.2989 R + 0.5870 G + 0.1140 B) * 255.5), so 0..255. The 32x32
image is flattened row by row. Token = grey + 1, so black (grey 0) is a real token and
never the padding id 0 (LRA masked black pixels out as padding); 257 ids.

Splits: 'test' is `test_batch`. 'val' is `val_fraction` of the 50k train images chosen by a
`config.seed` permutation, 'train' the rest (45k/5k by default). LRA took `train[90%:]` of
the TFDS copy, whose record order TFDS had already shuffled, so its 5k were a fixed random
subset as well, just not this one.

Options (`config.data`):
  val_fraction: 0.1  fraction of the train images held out as 'val' (seeded by config.seed).
"""

import os
import pickle

import numpy as np

from lra import errors
from lra.data import TaskData
from lra.data import common

_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_FILE = "test_batch"
_NUM_CLASSES = 10
_SIDE = 32
# ITU-R 601 luma weights, as in tf.image.rgb_to_grayscale.
_LUMA_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)
_EXPECTED = ("the cifar-10-batches-py folder holding the pickles data_batch_1 .. "
             "data_batch_5 and test_batch")
_SOURCE = ("Download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, unpack it "
           "and set config.data_path to its cifar-10-batches-py folder.")

TASK = common.CLASSIFICATION


def to_grey(rgb: np.ndarray) -> np.ndarray:
  """Returns uint8 `[N, 1024]` grey levels of uint8 `[N, 3072]` CIFAR rows (R, G, B planes)."""
  planes = rgb.reshape(len(rgb), 3, _SIDE * _SIDE).astype(np.float32) * np.float32(1 / 255)
  luma = np.einsum("npl,p->nl", planes, _LUMA_WEIGHTS)
  # TF converts float to uint8 by scaling with 255.5 and truncating, not by rounding.
  return (luma * np.float32(255.5)).astype(np.uint8)


def _read_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns the uint8 `[N, 3072]` images and int32 `[N]` labels of one pickle."""
  try:
    with open(path, "rb") as f:
      batch = pickle.load(f, encoding="bytes")
    images = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int32)
  except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, KeyError,
          TypeError, ValueError) as e:
    raise errors.DataError(
        f"{path}: not a CIFAR-10 batch, a pickled dict with keys b'data' (uint8 [N, 3072]) "
        f"and b'labels' ({type(e).__name__}: {e}). {_SOURCE}") from None
  if (images.ndim != 2 or images.shape[1] != 3 * _SIDE * _SIDE
      or labels.shape != (len(images),)
      or not np.all((labels >= 0) & (labels < _NUM_CLASSES))):
    raise errors.DataError(
        f"{path}: expected b'data' uint8 [N, 3072] and N b'labels' in 0..9, got data of "
        f"shape {images.shape} and {labels.size} labels. {_SOURCE}")
  return images, labels


def _read_files(folder: str, names) -> tuple[np.ndarray, np.ndarray]:
  """Returns the concatenated tokens `[N, 1024]` and labels of the pickles `names`."""
  batches = [_read_batch(common.require_file(os.path.join(folder, n), _EXPECTED, _SOURCE))
             for n in names]
  images = np.concatenate([images for images, _ in batches])
  labels = np.concatenate([labels for _, labels in batches])
  return common.pixels_to_tokens(to_grey(images)), labels


def load(config) -> TaskData:
  """Reads CIFAR-10 from `config.data_path`; see the module docstring for splits."""
  folder = common.require_dir(config.data_path, _EXPECTED, _SOURCE)
  val_fraction = common.option(config, "val_fraction", 0.1)
  train_tokens, train_labels = _read_files(folder, _TRAIN_FILES)
  test_tokens, test_labels = _read_files(folder, (_TEST_FILE,))
  train_idx, val_idx = common.seeded_split(len(train_labels), (val_fraction,), config.seed)
  return TaskData(
      splits={"train": {"inputs": train_tokens[train_idx], "targets": train_labels[train_idx]},
              "val": {"inputs": train_tokens[val_idx], "targets": train_labels[val_idx]},
              "test": {"inputs": test_tokens, "targets": test_labels}},
      vocab=common.pixel_vocab(),
      num_classes=_NUM_CLASSES)
