"""Tests of the grey CIFAR-10 loader on tiny cifar-10-batches-py pickles."""

import os
import pickle

import numpy as np
import pytest

from lra import errors
import lra.data
from lra.data import PAD_ID
from lra.data import image
from tests.data import fixtures


@pytest.fixture
def cifar(tmp_path):
  return fixtures.write_cifar(tmp_path, num_train=50, num_test=10)


def _config(path, tmp_path, **options):
  return fixtures.data_config("image", path, tmp_path / "cache", **options)


def _train_rows():
  """The fixture's train images in file order, as grey tokens."""
  rows = [fixtures.cifar_images(10, seed)[0] for seed in range(5)]
  return image.to_grey(np.concatenate(rows)).astype(np.int64) + 1


def test_splits_shapes_and_labels(cifar, tmp_path):
  data = lra.data.load(_config(cifar, tmp_path, val_fraction=0.2))
  assert data.num_classes == 10 and len(data.vocab) == 257
  assert {k: v["inputs"].shape for k, v in data.splits.items()} == {
      "train": (40, 1024), "val": (10, 1024), "test": (10, 1024)}
  test = data.splits["test"]
  np.testing.assert_array_equal(test["targets"], np.arange(10))
  expected = image.to_grey(fixtures.cifar_images(10, 5)[0]).astype(np.int64) + 1
  np.testing.assert_array_equal(test["inputs"], expected)


def test_black_pixels_are_tokens_not_padding(cifar, tmp_path):
  data = image.load(_config(cifar, tmp_path))
  for split in data.splits.values():
    assert np.all(split["inputs"] != PAD_ID)
  # The first test image is black: grey 0 is token 1.
  assert np.all(data.splits["test"]["inputs"][0] == 1)
  assert data.vocab[1] == "0" and data.vocab[PAD_ID] == "<pad>"


def test_grey_matches_tensorflow_rgb_to_grayscale():
  # Worked out by hand from TF's steps: x / 255, luma weights, * 255.5, truncate. Green:
  # 0.587 * 255.5 = 149.98 gives 149 (rounding would give 150).
  colours = {(255, 0, 0): 76, (0, 255, 0): 149, (0, 0, 255): 29, (255, 255, 255): 255,
             (0, 0, 0): 0, (100, 150, 200): 141}
  rgb = np.zeros((len(colours), 3072), dtype=np.uint8)
  for row, (r, g, b) in zip(rgb, colours):
    row[:1024], row[1024:2048], row[2048:] = r, g, b
  grey = image.to_grey(rgb)
  assert grey.shape == (len(colours), 1024)
  np.testing.assert_array_equal(grey[:, 0], list(colours.values()))
  assert np.all(grey == grey[:, :1])


def test_planes_are_read_row_major():
  rgb = np.zeros((1, 3072), dtype=np.uint8)
  rgb[0, 0 * 1024 + 5 * 32 + 7] = 255  # Red at row 5, column 7.
  rgb[0, 2 * 1024 + 31] = 255  # Blue at row 0, column 31.
  grey = image.to_grey(rgb)[0]
  assert grey[5 * 32 + 7] == 76 and grey[31] == 29
  assert np.count_nonzero(grey) == 2


def test_validation_is_a_seeded_part_of_train(cifar, tmp_path):
  data = image.load(_config(cifar, tmp_path, val_fraction=0.2))
  again = image.load(_config(cifar, tmp_path, val_fraction=0.2))
  other = image.load(fixtures.data_config("image", cifar, tmp_path, seed=3, val_fraction=0.2))
  np.testing.assert_array_equal(data.splits["val"]["inputs"], again.splits["val"]["inputs"])
  assert not np.array_equal(data.splits["val"]["inputs"], other.splits["val"]["inputs"])
  rows = np.concatenate([data.splits["train"]["inputs"], data.splits["val"]["inputs"]])
  targets = np.concatenate([data.splits["train"]["targets"], data.splits["val"]["targets"]])
  expected = _train_rows()
  order = np.lexsort(rows.T[::-1])
  expected_order = np.lexsort(expected.T[::-1])
  np.testing.assert_array_equal(rows[order], expected[expected_order])
  np.testing.assert_array_equal(targets[order], (np.arange(50) % 10)[expected_order])


def test_missing_data_messages(cifar, tmp_path):
  with pytest.raises(errors.DataError, match="config.data_path is not set.*cifar-10-python"):
    image.load(_config(None, tmp_path))
  os.remove(os.path.join(cifar, "test_batch"))
  with pytest.raises(errors.DataError, match="test_batch does not exist.*www.cs.toronto.edu"):
    image.load(_config(cifar, tmp_path))


@pytest.mark.parametrize("content", [
    b"not a pickle",
    pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}),
    pickle.dumps({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}),
    pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}),
])
def test_malformed_batches_name_the_file(cifar, tmp_path, content):
  with open(os.path.join(cifar, "data_batch_3"), "wb") as f:
    f.write(content)
  with pytest.raises(errors.DataError, match="data_batch_3: "):
    image.load(_config(cifar, tmp_path))
