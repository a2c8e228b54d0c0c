"""The attention-pattern figure end to end, and its flag errors."""

import numpy as np
import pytest
from PIL import Image

from experiments import plot_patterns
from tests import entry_points


def run_plot(*args):
  return entry_points.run_module("plot_patterns", *args, timeout=120)


def test_every_mechanism_draws_one_png(tmp_path):
  completed = run_plot("--attention=full,local,dilated,longformer", "--causal=local",
                       "--length=24",
                       f"--out={tmp_path}")
  assert completed.returncode == 0, completed.stderr
  path = tmp_path / "attention_patterns.png"
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    assert image.format == "PNG"
    width, height = image.size
    assert width > 600 and height > 600  # a 2 x 3 grid of readable panels


def test_unknown_mechanism_ends_in_one_line(tmp_path):
  completed = run_plot("--attention=local,flash", f"--out={tmp_path}")
  assert completed.returncode == 2
  lines = completed.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:") and "flash" in lines[0], lines
  assert not (tmp_path / "attention_patterns.png").exists()


@pytest.mark.parametrize("variant,causal", [("local", False), ("local", True),
                                            ("longformer", False)])
def test_score_tiles_cover_every_window_cell_once_per_query(variant, causal):
  length, block = 29, 4
  (panel,) = plot_patterns.panels(variant, length, window=5, dilations=(1,), causal=causal)
  window = np.asarray(panel.bound.pattern(length))[0, 0]
  covered = np.zeros((length, length), int)
  for query, key, queries, keys in plot_patterns.score_tiles(panel, length, block):
    covered[query:query + queries, key:key + keys] += 1
  assert (covered.sum(axis=1) > 0).all()
  assert covered.max() == 1  # each query lies in exactly one block's tile rows
  assert not (window & (covered == 0)).any()  # every seen key was scored
