"""Pathfinder and Path-X: are the two marked dots joined by one path? 2 classes.

Reads the layout of the LRA release, `config.data_path` being a `pathfinderNN` folder
(`lra_release/lra_release/pathfinder32` for Pathfinder, `.../pathfinder128` for Path-X):
`<difficulty folder>/metadata/<k>.npy` and `<difficulty folder>/imgs/<k>/sample_<i>.png`.
Despite the extension each metadata file is plain text, one image per line, space
separated: field 0 the image folder (`imgs/<k>`), field 1 the file name, field 3 the label
(0/1); other fields are ignored. PNGs are read as grey levels and flattened row by row;
token = grey + 1, so black background pixels are real tokens, never the padding id 0 (LRA
masked them out as padding); 257 ids. Empty or undecodable PNGs (the release has some) are
skipped with one warning.

Splits: 80/10/10 'train'/'val'/'test' by a `config.seed` permutation (LRA cut the TFDS
record order at 80% and 90%). Decoding 200k PNGs takes a minute or more, so the splits are
cached once as `.npy` files under `config.data_cache_dir`, keyed by the absolute data path,
the resolution, the difficulty, the seed and the metadata files' sizes and times; later
loads read the cache.

When `config.data_path` is None and `config.size` is 'small' or 'tiny', a dataset of n
images is generated (see `generate`) into
`<data_cache_dir>/pathfinder<resolution>_<n>images_seed<s>`, s = `generator_seed`, unless it
is already there.

Options (`config.data`):
  resolution: 32         image side: 32 for Pathfinder, 128 for Path-X (length = side**2).
  difficulty: 'hard'     contour length: 'easy' (curv_baseline), 'intermediate'
                         (curv_contour_length_9) or 'hard' (curv_contour_length_14, LRA's).
  generator_seed: 0      seed of the generated dataset when config.data_path is None.
  num_generated: 0       images of the generated dataset; 0: the size's (below).

Generation (`generate`, or `python -m experiments.generate_data pathfinder --out=DIR`)
writes the same layout, 10,000 images per `imgs/<k>` folder, with the metadata fields
`imgs/<k> sample_<i>.png <index> <label> <contour segments> <distractors> <row0> <col0>
<row1> <col1>` (the last four: the marker centres). The images are drawn by
`lra.data.contours` (its docstring says how and how they differ from LRA's). Sizes: tiny
64 images, small 10,000, paper 200,000 (as LRA). Measured on one CPU core: ~2.5 ms an image
at resolution 32 (small ~25 s, paper ~8 minutes), ~7 ms at 128 (paper ~25 minutes);
decoding into the cache then takes ~0.2 ms (32) or ~0.4 ms (128) an image.
"""

import hashlib
import json
import math
import os
import random
import time

from absl import logging
import numpy as np
from PIL import Image

from lra import errors
from lra.data import TaskData
from lra.data import common
from lra.data import contours

_DIFFICULTY_FOLDERS = {"easy": "curv_baseline", "intermediate": "curv_contour_length_9",
                      "hard": "curv_contour_length_14"}
_CONTOUR_SEGMENTS = {"easy": 6, "intermediate": 9, "hard": 14}
_GENERATED_SIZES = {"tiny": 64, "small": 10_000, "paper": 200_000}
_IMAGES_PER_FOLDER = 10_000
_HELD_OUT_FRACTIONS = (0.1, 0.1)  # val, test; train is the rest.
_SPLITS = ("train", "val", "test")
# Part of the cache key: bump it when the cached arrays change meaning.
_CACHE_VERSION = 1
_EXPECTED = ("a pathfinderNN folder holding {folder}/metadata/<k>.npy (text: image folder, "
             "file name, _, label per line) and {folder}/imgs/<k>/sample_<i>.png")
_SOURCE = ("Pathfinder is published in the LRA release "
           "https://storage.googleapis.com/long-range-arena/lra_release.gz (set "
           "config.data_path to lra_release/lra_release/pathfinder32, or pathfinder128 for "
           "Path-X), or generate one with `python -m experiments.generate_data pathfinder "
           "--out=DIR` and set config.data_path to DIR.")

TASK = common.CLASSIFICATION


def _difficulty_folder(difficulty: str) -> str:
  if difficulty not in _DIFFICULTY_FOLDERS:
    raise errors.ConfigError(
        f"config.data.difficulty must be one of {', '.join(_DIFFICULTY_FOLDERS)}, got "
        f"{difficulty!r}")
  return _DIFFICULTY_FOLDERS[difficulty]


def _read_metadata(folder: str) -> list[tuple[str, int]]:
  """Returns (PNG path, label) of every metadata line, files in numeric order."""
  metadata_dir = os.path.join(folder, "metadata")
  # Sorting by (length, name) puts 2.npy before 10.npy.
  names = sorted((n for n in os.listdir(metadata_dir) if n.endswith(".npy")),
                 key=lambda n: (len(n), n))
  if not names:
    raise errors.DataError(f"{metadata_dir} holds no <k>.npy metadata files. {_SOURCE}")
  entries = []
  for name in names:
    path = os.path.join(metadata_dir, name)
    with open(path, "rb") as f:
      for line_number, raw_line in enumerate(f, start=1):
        where = f"{path}:{line_number}"
        try:
          fields = raw_line.decode("utf-8").split()
        except UnicodeDecodeError:
          raise errors.DataError(
              f"{where}: not text; expected space-separated fields: image folder, file "
              f"name, _, label") from None
        if not fields:
          continue
        if len(fields) < 4:
          raise errors.DataError(
              f"{where}: expected at least 4 space-separated fields (image folder, file "
              f"name, _, label), got {len(fields)}")
        label = common.parse_binary_label(fields[3], where)
        entries.append((os.path.join(folder, fields[0], fields[1]), label))
  return entries


def _decode(path: str, resolution: int) -> np.ndarray | None:
  """Returns the uint8 `[resolution**2]` grey levels of a PNG, or None if unreadable."""
  try:
    with Image.open(path) as image:
      pixels = np.asarray(image.convert("L"))
  except (OSError, ValueError):  # Missing, empty or corrupt (PIL's errors are OSErrors).
    return None
  if pixels.shape != (resolution, resolution):
    raise errors.DataError(
        f"{path}: image is {pixels.shape[1]}x{pixels.shape[0]} but config.data.resolution is "
        f"{resolution}; point config.data_path at the pathfinder{resolution} folder or set "
        f"the resolution of the data")
  return pixels.reshape(-1)


def _preprocess(folder: str, resolution: int, seed: int, out_dir: str) -> None:
  """Decodes every image listed under `folder`, splits them and saves the splits."""
  entries = _read_metadata(folder)
  pixels = np.empty((len(entries), resolution * resolution), dtype=np.uint8)
  labels = np.empty(len(entries), dtype=np.int32)
  skipped, count = [], 0
  for path, label in entries:
    decoded = _decode(path, resolution)
    if decoded is None:
      skipped.append(path)
      continue
    pixels[count], labels[count] = decoded, label
    count += 1
  if skipped:
    logging.warning("Skipped %d unreadable (missing, empty or corrupt) Pathfinder images, "
                    "e.g. %s", len(skipped), ", ".join(skipped[:3]))
  if not count:
    raise errors.DataError(
        f"none of the {len(entries)} images listed in {folder}/metadata could be read; "
        f"expected {_EXPECTED.format(folder=os.path.basename(folder))}. {_SOURCE}")
  for split, indices in zip(_SPLITS, common.seeded_split(count, _HELD_OUT_FRACTIONS, seed)):
    np.save(os.path.join(out_dir, f"{split}_inputs.npy"),
            common.pixels_to_tokens(pixels[indices]))
    np.save(os.path.join(out_dir, f"{split}_targets.npy"), labels[indices])


def _cache_dir(cache_root: str, folder: str, resolution: int, difficulty: str,
               seed: int) -> str:
  """Returns the cache folder of one dataset folder, resolution, difficulty and seed."""
  metadata_dir = os.path.join(folder, "metadata")
  metadata = []
  for name in sorted(os.listdir(metadata_dir)):
    stat = os.stat(os.path.join(metadata_dir, name))
    metadata.append((name, stat.st_size, stat.st_mtime_ns))
  key = json.dumps([_CACHE_VERSION, os.path.abspath(folder), resolution, difficulty, seed,
                    metadata])
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  return os.path.join(cache_root, "pathfinder",
                      f"pathfinder{resolution}_{difficulty}_seed{seed}_{digest}")


def _dataset_root(config, resolution: int, difficulty: str) -> str:
  """Returns the pathfinderNN folder to read, generating a small one if none is given."""
  if config.data_path is not None:
    return config.data_path
  if config.size not in ("small", "tiny"):
    raise common.missing_data_error(
        None, _EXPECTED.format(folder=_DIFFICULTY_FOLDERS[difficulty]),
        _SOURCE + " Only sizes 'small' and 'tiny' generate a dataset when the path is unset.")
  generator_seed = common.option(config, "generator_seed", 0)
  num_examples = common.option(config, "num_generated", 0) or _GENERATED_SIZES[config.size]
  root = os.path.join(config.data_cache_dir,
                      f"pathfinder{resolution}_{num_examples}images_seed{generator_seed}")
  if not os.path.isdir(os.path.join(root, _DIFFICULTY_FOLDERS[difficulty])):
    _write_dataset(root, num_examples=num_examples, seed=generator_seed,
                   resolution=resolution, difficulty=difficulty)
  return root


def load(config) -> TaskData:
  """Reads (or generates, then reads) Pathfinder; see the module docstring."""
  resolution = common.option(config, "resolution", 32)
  difficulty = common.option(config, "difficulty", "hard")
  folder_name = _difficulty_folder(difficulty)
  expected = _EXPECTED.format(folder=folder_name)
  root = common.require_dir(_dataset_root(config, resolution, difficulty), expected, _SOURCE)
  folder = common.require_dir(os.path.join(root, folder_name), expected, _SOURCE)
  common.require_dir(os.path.join(folder, "metadata"), expected, _SOURCE)

  cache = _cache_dir(config.data_cache_dir, folder, resolution, difficulty, config.seed)
  if not os.path.isdir(cache):
    logging.info("Decoding Pathfinder images of %s into %s", folder, cache)
    with common.atomic_directory(cache) as scratch:
      _preprocess(folder, resolution, config.seed, scratch)
  splits = {split: {"inputs": np.load(os.path.join(cache, f"{split}_inputs.npy")),
                    "targets": np.load(os.path.join(cache, f"{split}_targets.npy"))}
            for split in _SPLITS}
  return TaskData(splits=splits, vocab=common.pixel_vocab(), num_classes=2)


def _write_dataset(out_dir: str, *, num_examples: int, seed: int, resolution: int,
                   difficulty: str) -> None:
  """Draws `num_examples` images into `out_dir/<difficulty folder>`, atomically."""
  if resolution < 16:
    raise errors.ConfigError(f"the Pathfinder resolution must be at least 16, got {resolution}")
  geom = contours.geometry(resolution, _CONTOUR_SEGMENTS[difficulty])
  # Exactly balanced labels in a seeded order.
  labels = np.random.default_rng(seed).permutation(np.arange(num_examples) % 2)
  start = time.time()
  with common.atomic_directory(
      os.path.join(out_dir, _DIFFICULTY_FOLDERS[difficulty])) as scratch:
    os.makedirs(os.path.join(scratch, "metadata"))
    for k in range(math.ceil(num_examples / _IMAGES_PER_FOLDER)):
      os.makedirs(os.path.join(scratch, "imgs", str(k)))
      lines = []
      for i in range(min(_IMAGES_PER_FOLDER, num_examples - k * _IMAGES_PER_FOLDER)):
        index = k * _IMAGES_PER_FOLDER + i
        # One generator per image: image `index` is the same whatever else is drawn.
        rng = random.Random(f"pathfinder/{seed}/{index}")
        pixels, ((r0, c0), (r1, c1)) = contours.draw(rng, geom, connected=bool(labels[index]))
        Image.fromarray(pixels).save(
            os.path.join(scratch, "imgs", str(k), f"sample_{i}.png"))
        lines.append(f"imgs/{k} sample_{i}.png {index} {labels[index]} {geom.num_segments} "
                     f"{geom.num_distractors} {r0} {c0} {r1} {c1}\n")
      with open(os.path.join(scratch, "metadata", f"{k}.npy"), "w") as f:
        f.writelines(lines)
      logging.info("Drew %d of %d Pathfinder images at %dx%d in %.1f s", index + 1,
                   num_examples, resolution, resolution, time.time() - start)


def generate(out_dir: str, *, size: str, seed: int, num_examples: int | None = None,
             resolution: int = 32, difficulty: str = "hard") -> None:
  """Writes a generated Pathfinder dataset in the LRA layout.

  Args:
    out_dir: the pathfinderNN folder to write; `<out_dir>/<difficulty folder>` must not
      exist yet.
    size: 'tiny', 'small' or 'paper': the number of images (see the module docstring).
    seed: generator seed; the same seed and options give the same files.
    num_examples: overrides the number of images of `size`.
    resolution: image side in pixels (32 Pathfinder, 128 Path-X).
    difficulty: 'easy', 'intermediate' or 'hard': contours of 6, 9 or 14 segments.
  """
  folder = os.path.join(out_dir, _difficulty_folder(difficulty))
  if size not in _GENERATED_SIZES:
    raise errors.ConfigError(f"size must be one of {', '.join(_GENERATED_SIZES)}, got {size!r}")
  if os.path.exists(folder):
    raise errors.DataError(f"{folder} already exists; remove it or choose another output")
  num_examples = _GENERATED_SIZES[size] if num_examples is None else num_examples
  if num_examples < 1:
    raise errors.ConfigError(f"num_examples must be positive, got {num_examples}")
  _write_dataset(out_dir, num_examples=num_examples, seed=seed, resolution=resolution,
                 difficulty=difficulty)
