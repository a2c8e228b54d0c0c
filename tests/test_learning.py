"""Tiny runs that must learn, one per task family, and the checkpoint the test score is from.

Every classification task here is a neighbour rule: an example holds two markers (tokens,
bytes or bright pixels) in random filler, and its class says whether the second marker sits
right after the first or at least `_GAP` positions away. Examples come in twins that hold
the same multiset of values (the second marker swapped with one filler value), one of each
class, so a bag-of-tokens model (anything blind to order) scores exactly the 50% prior:
the rule needs attention between neighbours, which a one-sided window w >= 1 gives. The
character LM's rule is a copy: each character repeats the one two positions back, which
only attention to an earlier position predicts. Each run goes through the task's config
file, its loader (the data are written in the real on-disk layout) and the trainer, and
must beat its prior by a stated margin on the test split.
"""

import json
import math
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest

from configs import common as config_common
from lra import train
from tests.entry_points import REPO

_GAP = 4  # the second marker of a negative example is at least this far from the first
# Accuracy above the majority class (50%) that every classification run must reach.
ACCURACY_MARGIN = 0.3
# Bits per character below the unigram entropy (the best an order-blind model does).
BPC_MARGIN = 1.0


def twins(seed: int, count: int, length: int, filler: np.ndarray, first, second):
  """`count` (sequence, label) pairs of the neighbour rule, twins in a row (labels 1, 0)."""
  rng = np.random.default_rng(seed)
  examples = []
  for _ in range(count // 2):
    sequence = list(rng.choice(filler, length))
    a = int(rng.integers(0, length - 1))
    far = [p for p in range(length) if abs(p - a) >= _GAP]
    b = int(rng.choice(far))
    positive, negative = list(sequence), list(sequence)
    positive[a], positive[a + 1] = first, second
    # The twin: the second marker trades places with the filler value the positive has at b.
    negative[a], negative[a + 1], negative[b] = first, sequence[b], second
    positive[b] = sequence[b]
    examples += [(positive, 1), (negative, 0)]
  return examples


def test_twins_hold_the_same_values_and_follow_the_rule():
  examples = twins(0, 200, 12, np.arange(5), 8, 9)
  for (positive, one), (negative, zero) in zip(examples[::2], examples[1::2]):
    assert (one, zero) == (1, 0)
    assert sorted(positive) == sorted(negative)  # a bag of tokens cannot tell them apart
    a = positive.index(8)
    assert positive[a + 1] == 9 and negative.index(8) == a
    assert abs(negative.index(9) - a) >= _GAP


def _config(spec: str, tmp_path, data_path, *, steps: int, **model):
  config = config_common.load_config(os.path.join(REPO, spec))
  with config.unlocked():
    config.data_path = os.fspath(data_path)
    config.data_cache_dir = str(tmp_path / "cache")
    config.num_train_steps = steps
    config.eval_every_steps = config.checkpoint_every_steps = steps
    config.log_every_steps = steps
    if "phases" not in config:
      config.batch_size = 32
      config.eval_batch_size = 100
      config.optimizer.schedule = "constant"
      config.optimizer.learning_rate = 3e-3
      config.optimizer.warmup_steps = 10
      config.model.pooling = "max"  # where the neighbour's detector fires
      config.model.pos_emb = "rotary"  # scores by offset: "next to" is one rotation
    config.model.update(model)
  return config


def _check_learns(config, tmp_path) -> dict:
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["majority_class_rate"] == pytest.approx(0.5, abs=0.05)
  assert results["test_accuracy"] >= results["majority_class_rate"] + ACCURACY_MARGIN, results
  return results


def write_listops(folder, length: int, counts=(2000, 200, 200), flip_train=False):
  """`basic_{train,val,test}.tsv` of the neighbour rule over digits, markers `[MIN [MAX`."""
  os.makedirs(folder, exist_ok=True)
  digits = np.array([str(d) for d in range(10)])
  for seed, (split, count) in enumerate(zip(("train", "val", "test"), counts)):
    with open(os.path.join(folder, f"basic_{split}.tsv"), "w") as f:
      f.write("Source\tTarget\n")
      for sequence, label in twins(seed, count, length, digits, "[MIN", "[MAX"):
        label = 1 - label if flip_train and split == "train" else label
        f.write(f"{' '.join(sequence)}\t{label}\n")
  return folder


def test_tokens_listops_layout_learns_the_neighbour_rule(tmp_path):
  data = write_listops(tmp_path / "listops", length=32)
  _check_learns(_config("configs/listops.py:attention=local,size=tiny", tmp_path, data,
                        steps=150), tmp_path)


def write_imdb(root, length: int, count: int = 1600):
  """`aclImdb/{train,test}/{pos,neg}/` reviews of the neighbour rule over lowercase bytes,
  markers `A` then `B` (the loader splits validation off train)."""
  base = os.path.join(root, "aclImdb")
  letters = np.array(list("abcdefghij"))
  for seed, split in enumerate(("train", "test")):
    for label_name in ("neg", "pos"):
      os.makedirs(os.path.join(base, split, label_name))
    for i, (sequence, label) in enumerate(twins(seed, count // (1 + 3 * seed), length,
                                               letters, "A", "B")):
      name = f"{i}_{8 if label else 2}.txt"
      with open(os.path.join(base, split, "pos" if label else "neg", name), "w") as f:
        f.write("".join(sequence))
  return base


@pytest.mark.slow  # the same rule on tokens: test_tokens_listops_layout_...
def test_bytes_text_layout_learns_the_neighbour_rule(tmp_path):
  data = write_imdb(tmp_path / "imdb", length=32)
  config = _config("configs/text.py:attention=local,size=tiny", tmp_path, data, steps=150)
  with config.unlocked():
    config.data.max_length = 32
  _check_learns(config, tmp_path)


def write_pathfinder(root, resolution: int, count: int = 2400):
  """A `pathfinderNN/` folder of the neighbour rule over dim pixels: two bright pixels side
  by side in a row (class 1) or apart (class 0), at any position of the flattened image."""
  base = os.path.join(root, f"pathfinder{resolution}")
  folder = os.path.join(base, "curv_contour_length_14")
  os.makedirs(os.path.join(folder, "imgs", "0"))
  os.makedirs(os.path.join(folder, "metadata"))
  lines = []
  for i, (pixels, label) in enumerate(twins(0, count, resolution**2, np.arange(0, 64, 8),
                                            255, 255)):
    image = np.array(pixels, np.uint8).reshape(resolution, resolution)
    Image.fromarray(image).save(os.path.join(folder, "imgs", "0", f"sample_{i}.png"))
    lines.append(f"imgs/0 sample_{i}.png {i} {label} 14 1.5 2\n")
  with open(os.path.join(folder, "metadata", "0.npy"), "w") as f:
    f.writelines(lines)
  return base


@pytest.mark.slow  # the same rule on tokens: test_tokens_listops_layout_...
def test_pixels_pathfinder_layout_learns_the_neighbour_rule(tmp_path):
  data = write_pathfinder(tmp_path / "pathfinder", resolution=8)
  config = _config("configs/pathfinder.py:attention=local,size=tiny", tmp_path, data,
                   steps=150, emb_dim=32, mlp_dim=64)
  with config.unlocked():
    config.data.resolution = 8
    config.data.max_length = 64
  _check_learns(config, tmp_path)


@pytest.mark.slow  # a trained char-LM: tests/test_lm_commands.py
def test_characters_lm_learns_the_copy_rule(tmp_path):
  """Segments `xyxyxy...` of random pairs over 8 letters: a character is the one two
  positions back, except where a segment starts; the unigram entropy is 3 bits."""
  rng = np.random.default_rng(0)
  letters = np.array(list("abcdefgh"))
  text = "".join("".join(rng.choice(letters, 2)) * 8 for _ in range(3000))
  path = tmp_path / "copy.txt"
  path.write_text(text)
  config = _config("configs/enwik8.py:size=tiny", tmp_path, path, steps=300,
                   windows=(4, 4))
  with config.unlocked():
    config.data.format = "text"
    config.phases = ml_collections.ConfigDict(dict(
        steps=(300,), seq_length=(64,), batch_size=(16,), window_scale=(1,),
        learning_rate=(3e-3,), warmup_steps=(10,)))
    config.evaluation.update(length=64, step=32, scored_length=32, max_chars=4000)
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  prior = math.log2(len(letters))
  assert results["test_bpc"] <= prior - BPC_MARGIN, results


def test_the_test_score_is_the_best_validation_checkpoints(tmp_path):
  """Train labels flipped against validation's: validation accuracy falls as training
  goes on, so the best checkpoint is the first one evaluated and the last is far worse.
  The test split is the validation split's file, so the best checkpoint's test accuracy
  is its validation accuracy, exactly, and the last checkpoint's is not."""
  data = write_listops(tmp_path / "listops", length=16, counts=(2000, 200, 200),
                       flip_train=True)
  (data / "basic_test.tsv").write_bytes((data / "basic_val.tsv").read_bytes())
  config = _config("configs/listops.py:attention=local,size=tiny", tmp_path, data,
                   steps=150)
  with config.unlocked():
    config.eval_every_steps = 15
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  val = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  val = {r["step"]: r["val_accuracy"] for r in val if "val_accuracy" in r}
  last = val[max(val)]
  assert results["best_val_step"] < max(val), val
  assert results["best_val_accuracy"] == max(val.values())
  assert last <= results["best_val_accuracy"] - 0.2, val  # best and last differ clearly
  assert results["test_accuracy"] == pytest.approx(results["best_val_accuracy"], abs=1e-6)
