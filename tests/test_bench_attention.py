"""The attention benchmark end to end at tiny sizes, its FLOP count, and its flag errors."""

import csv

import numpy as np
from PIL import Image
import pytest

from experiments import bench_attention
from lra import attention
from tests import entry_points



def run_bench(*args):
  return entry_points.run_module("bench_attention", *args, timeout=300)


@pytest.mark.parametrize("length,window,dilations,global_positions", [
    (64, 8, (1,), ()),
    (10, 4, (1,), ()),  # a window wider than half the sequence
    (37, 3, (1, 2, 3), ()),
    (40, 5, (1, 2), (0,)),
    (33, 4, (2,), (0, 16, 17)),
])
def test_pattern_pairs_counts_the_oracle_pattern(length, window, dilations, global_positions):
  global_mask = None
  if global_positions:
    global_mask = np.zeros((1, length), bool)
    global_mask[0, list(global_positions)] = True
  mask = attention.pattern_mask(length, window=window, dilation=dilations,
                                num_heads=len(dilations), global_mask=global_mask)
  assert bench_attention.pattern_pairs(length, window, dilations,
                                       global_positions) == int(np.sum(mask))


def test_tiny_run_writes_every_output(tmp_path):
  out = tmp_path / "bench"
  completed = run_bench(
      "--lengths=64,128", "--window=8", "--heads=2", "--head_dim=8", "--repeats=1",
      "--mechanisms=local,longformer,full", "--full_max_length=64", "--matmul_size=64",
      f"--out={out}")
  assert completed.returncode == 0, completed.stderr
  assert "[1/6] local length 64" in completed.stdout
  assert "| mechanism | length |" in completed.stdout

  with open(out / "bench.csv") as f:
    reader = csv.DictReader(f)
    assert tuple(reader.fieldnames) == bench_attention.CSV_COLUMNS
    rows = list(reader)
  assert [(r["mechanism"], int(r["length"])) for r in rows] == [
      ("local", 64), ("longformer", 64), ("full", 64),
      ("local", 128), ("longformer", 128), ("full", 128)]
  for row in rows[:5]:
    assert row["status"] == "ok", row
    for key in ("median_s", "useful_gflops", "pct_of_matmul", "setup_rss_gb", "peak_rss_gb"):
      assert float(row[key]) > 0, (key, row)
    assert float(row["peak_rss_gb"]) >= float(row["setup_rss_gb"])
  assert rows[5]["status"].startswith("skipped: length > --full_max_length")

  markdown = (out / "bench.md").read_text()
  assert "Machine:" in markdown and "GFLOP/s" in markdown
  assert markdown.count("| longformer |") == 2
  for name in ("bench.json", "bench.png"):
    assert (out / name).exists(), name
  with Image.open(out / "bench.png") as image:
    image.verify()


def test_rounds_pool_their_steps_and_keep_the_largest_memory():
  slow_round = {"status": "ok", "times_s": [5.0, 6.0, 7.0], "warmup_s": [9.0],
                "median_s": 6.0, "setup_rss_gb": 0.2, "peak_rss_gb": 0.5}
  fast_round = {"status": "ok", "times_s": [1.0, 2.0], "warmup_s": [8.0], "median_s": 1.5,
                "setup_rss_gb": 0.1, "peak_rss_gb": 0.7}
  failed = {"status": "failed: exit 1"}
  pooled = bench_attention._pool([failed, slow_round, fast_round])
  assert pooled["median_s"] == 5.0  # the median of 1, 2, 5, 6, 7
  assert (pooled["peak_rss_gb"], pooled["setup_rss_gb"], pooled["rounds"]) == (0.7, 0.2, 2)
  assert pooled["warmup_s"][0] == 9.0  # the first round's compiling call
  assert bench_attention._pool([failed, failed]) == failed


@pytest.mark.parametrize("flag,message", [
    ("--mechanisms=local,flash", "must be a comma-separated subset of"),
    ("--window=0", "must be > 0"),
    ("--dilations=1,2,4", "do not split --heads=8"),
])
def test_bad_flags_end_in_one_line(tmp_path, flag, message):
  completed = run_bench(flag, f"--out={tmp_path}")
  assert completed.returncode == 2
  assert "Traceback" not in completed.stderr
  lines = completed.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
