"""Tests of the Pathfinder loader, its cache, and the generator."""

import collections
import logging
import os

import numpy as np
from PIL import Image
import pytest

from lra import errors
import lra.data
from lra.data import PAD_ID
from lra.data import pathfinder
from tests import entry_points
from tests.data import fixtures

_HARD = "curv_contour_length_14"


@pytest.fixture
def pf32(tmp_path):
  return fixtures.write_pathfinder(tmp_path / "data", num_images=40, resolution=32)


def _config(path, tmp_path, **kwargs):
  return fixtures.data_config("pathfinder", path, tmp_path / "cache", **kwargs)


def _expected_rows(num_images, resolution):
  """Token rows of the fixture images and their labels, keyed by bytes of the row."""
  return {(fixtures.pathfinder_image(i, i % 2, resolution).reshape(-1).astype(np.uint16)
           + 1).tobytes(): i % 2 for i in range(num_images)}


def _assert_same(a, b):
  for split in a.splits:
    for field in a.splits[split]:
      np.testing.assert_array_equal(a.splits[split][field], b.splits[split][field])


def test_splits_tokens_and_labels(pf32, tmp_path):
  data = lra.data.load(_config(pf32, tmp_path))
  assert data.num_classes == 2 and len(data.vocab) == 257
  assert {k: v["inputs"].shape for k, v in data.splits.items()} == {
      "train": (32, 1024), "val": (4, 1024), "test": (4, 1024)}
  expected = _expected_rows(40, 32)
  seen = []
  for split in data.splits.values():
    for row, label in zip(split["inputs"], split["targets"]):
      assert expected[row.tobytes()] == label
      seen.append(row.tobytes())
  assert sorted(seen) == sorted(expected)


def test_black_pixels_are_tokens_not_padding(pf32, tmp_path):
  inputs = pathfinder.load(_config(pf32, tmp_path)).splits["train"]["inputs"]
  assert np.all(inputs != PAD_ID)
  assert np.mean(inputs == 1) > 0.5  # Mostly black background, grey 0 = token 1.


def test_split_is_seeded(pf32, tmp_path):
  first = pathfinder.load(_config(pf32, tmp_path))
  _assert_same(first, pathfinder.load(_config(pf32, tmp_path / "other_cache")))
  other_seed = pathfinder.load(_config(pf32, tmp_path, seed=1))
  assert not np.array_equal(first.splits["test"]["inputs"], other_seed.splits["test"]["inputs"])


def test_cache_is_reused(pf32, tmp_path):
  first = pathfinder.load(_config(pf32, tmp_path))
  caches = os.listdir(tmp_path / "cache" / "pathfinder")
  assert len(caches) == 1
  # With the images gone, only the cache can give the same data.
  for name in os.listdir(os.path.join(pf32, _HARD, "imgs", "0")):
    os.remove(os.path.join(pf32, _HARD, "imgs", "0", name))
  _assert_same(first, pathfinder.load(_config(pf32, tmp_path)))
  assert os.listdir(tmp_path / "cache" / "pathfinder") == caches


def test_cache_is_keyed_by_seed(pf32, tmp_path):
  pathfinder.load(_config(pf32, tmp_path))
  pathfinder.load(_config(pf32, tmp_path, seed=1))
  assert len(os.listdir(tmp_path / "cache" / "pathfinder")) == 2


def test_unreadable_images_are_skipped_with_one_warning(pf32, tmp_path, caplog):
  images = os.path.join(pf32, _HARD, "imgs", "0")
  open(os.path.join(images, "sample_3.png"), "wb").close()  # Empty, as in the release.
  with open(os.path.join(images, "sample_8.png"), "wb") as f:
    f.write(b"\x89PNG garbage")
  with caplog.at_level(logging.WARNING):
    data = pathfinder.load(_config(pf32, tmp_path))
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1
  assert "Skipped 2" in warnings[0].getMessage()
  assert "sample_3.png" in warnings[0].getMessage()
  assert sum(len(s["targets"]) for s in data.splits.values()) == 38


def test_difficulty_chooses_the_folder(tmp_path):
  root = fixtures.write_pathfinder(tmp_path / "data", num_images=20, folder="curv_baseline")
  data = pathfinder.load(_config(root, tmp_path, difficulty="easy"))
  assert sum(len(s["targets"]) for s in data.splits.values()) == 20
  with pytest.raises(errors.DataError, match=f"{_HARD} does not exist"):
    pathfinder.load(_config(root, tmp_path))
  with pytest.raises(errors.ConfigError, match="difficulty must be one of"):
    pathfinder.load(_config(root, tmp_path, difficulty="medium"))


def test_resolution_mismatch_is_an_error(pf32, tmp_path):
  with pytest.raises(errors.DataError, match="32x32 but config.data.resolution is 64"):
    pathfinder.load(_config(pf32, tmp_path, resolution=64))


def test_malformed_metadata_names_file_and_line(pf32, tmp_path):
  path = os.path.join(pf32, _HARD, "metadata", "0.npy")
  with open(path, "a") as f:
    f.write("imgs/0 sample_0.png\n")
  with pytest.raises(errors.DataError, match=r"0.npy:41: expected at least 4"):
    pathfinder.load(_config(pf32, tmp_path))


def test_missing_data_messages(tmp_path):
  with pytest.raises(errors.DataError,
                     match="nowhere does not exist.*lra_release.gz.*generate_data pathfinder"):
    pathfinder.load(_config(tmp_path / "nowhere", tmp_path))
  with pytest.raises(errors.DataError, match="config.data_path is not set.*lra_release.gz"):
    pathfinder.load(_config(None, tmp_path, size="paper"))
  os.makedirs(tmp_path / "pf" / _HARD)
  with pytest.raises(errors.DataError, match="metadata does not exist"):
    pathfinder.load(_config(tmp_path / "pf", tmp_path))


# The generator.


def _components(pixels):
  """Labels the 8-connected components of the nonzero pixels; returns (labels, count)."""
  labels = np.zeros(pixels.shape, dtype=np.int32)
  count = 0
  for start in zip(*np.nonzero(pixels)):
    if labels[start]:
      continue
    count += 1
    labels[start] = count
    queue = collections.deque([start])
    while queue:
      r, c = queue.popleft()
      for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
          rr, cc = r + dr, c + dc
          if (0 <= rr < pixels.shape[0] and 0 <= cc < pixels.shape[1]
              and pixels[rr, cc] and not labels[rr, cc]):
            labels[rr, cc] = count
            queue.append((rr, cc))
  return labels, count


def _generated(root, resolution=32, folder=_HARD):
  """Yields (image, metadata fields) of every generated image."""
  with open(os.path.join(root, folder, "metadata", "0.npy")) as f:
    for line in f:
      fields = line.split()
      yield np.asarray(Image.open(os.path.join(root, folder, fields[0], fields[1]))), fields


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
  root = tmp_path_factory.mktemp("generated")
  pathfinder.generate(str(root), size="tiny", seed=0)
  return root


def test_generator_layout_and_balance(generated):
  images = list(_generated(generated))
  assert len(images) == 64
  assert all(image.shape == (32, 32) and image.dtype == np.uint8 for image, _ in images)
  assert collections.Counter(fields[3] for _, fields in images) == {"0": 32, "1": 32}


def test_generator_labels_match_connectivity(generated):
  for image, fields in list(_generated(generated))[:16]:
    label, num_distractors = int(fields[3]), int(fields[5])
    r0, c0, r1, c1 = map(int, fields[6:10])
    # The markers are lit 3x3 squares.
    for r, c in ((r0, c0), (r1, c1)):
      assert np.all(image[r - 1:r + 2, c - 1:c + 2] == 255)
    components, count = _components(image)
    assert (components[r0, c0] == components[r1, c1]) == bool(label)
    # Intact target + two halves of the cut one + distractors, whatever the label.
    assert count == 3 + num_distractors


def test_generator_classes_share_pixel_statistics(tmp_path):
  pathfinder.generate(str(tmp_path), size="tiny", seed=1, num_examples=200)
  lit = collections.defaultdict(list)
  for image, fields in _generated(tmp_path):
    lit[fields[3]].append(np.count_nonzero(image))
  difference = abs(np.mean(lit["1"]) - np.mean(lit["0"]))
  assert difference < 0.5 * np.std(lit["1"] + lit["0"])


def test_generator_is_deterministic(generated, tmp_path):
  pathfinder.generate(str(tmp_path / "same"), size="tiny", seed=0)
  pathfinder.generate(str(tmp_path / "other"), size="tiny", seed=1)
  for (a, fa), (b, fb) in zip(_generated(generated), _generated(tmp_path / "same")):
    assert fa == fb
    np.testing.assert_array_equal(a, b)
  assert not all(np.array_equal(a, b) for (a, _), (b, _) in zip(
      _generated(generated), _generated(tmp_path / "other")))


def test_generator_resolution_and_difficulty(tmp_path):
  pathfinder.generate(str(tmp_path), size="tiny", seed=0, num_examples=4, resolution=64,
                      difficulty="easy")
  images = list(_generated(tmp_path, folder="curv_baseline"))
  assert [image.shape for image, _ in images] == [(64, 64)] * 4
  assert all(fields[4] == "6" for _, fields in images)


def test_generate_data_command_takes_the_difficulty(tmp_path):
  done = entry_points.run_module(
      "generate_data", "pathfinder", f"--out={tmp_path}", "--size=tiny", "--num_examples=4",
      "--difficulty=intermediate", timeout=120)
  assert done.returncode == 0, done.stderr
  assert os.listdir(tmp_path) == ["curv_contour_length_9"]
  assert all(fields[4] == "9" for _, fields in
             _generated(tmp_path, folder="curv_contour_length_9"))


def test_generator_refuses_to_overwrite(generated):
  with pytest.raises(errors.DataError, match="already exists"):
    pathfinder.generate(str(generated), size="tiny", seed=0)


def test_load_generates_small_datasets_once(tmp_path):
  config = _config(None, tmp_path, size="tiny", generator_seed=3)
  data = pathfinder.load(config)
  assert {k: len(v["targets"]) for k, v in data.splits.items()} == {
      "train": 52, "val": 6, "test": 6}
  folder = tmp_path / "cache" / "pathfinder32_64images_seed3" / _HARD
  metadata = folder / "metadata" / "0.npy"
  stamp = os.stat(metadata).st_mtime_ns
  _assert_same(data, pathfinder.load(config))
  assert os.stat(metadata).st_mtime_ns == stamp
  # Generated data goes through the same reader: tokens are pixels + 1.
  assert np.all(data.splits["train"]["inputs"] >= 1)
  assert set(np.unique(data.splits["train"]["inputs"])) == {1, 256}


def test_num_generated_sets_the_generated_size(tmp_path):
  data = pathfinder.load(_config(None, tmp_path, size="tiny", num_generated=20))
  assert {k: len(v["targets"]) for k, v in data.splits.items()} == {
      "train": 16, "val": 2, "test": 2}
  assert os.path.isdir(tmp_path / "cache" / "pathfinder32_20images_seed0" / _HARD)
