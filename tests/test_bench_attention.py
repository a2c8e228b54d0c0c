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


@pytest.mark.parametrize("length,window,dilations,global_positions,causal", [
    (64, 8, (1,), (), False),
    (10, 4, (1,), (), False),  # a window wider than half the sequence
    (37, 3, (1, 2, 3), (), False),
    (40, 5, (1, 2), (0,), False),
    (33, 4, (2,), (0, 16, 17), False),
    (29, 3, (1, 3), (), True),
    (17, None, (1,), (), False),
    (17, None, (1, 1), (), True),
])
def test_pattern_pairs_counts_the_oracle_pattern(length, window, dilations, global_positions,
                                                 causal):
  global_mask = None
  if global_positions:
    global_mask = np.zeros((1, length), bool)
    global_mask[0, list(global_positions)] = True
  mask = attention.pattern_mask(length, window=window, dilation=dilations, causal=causal,
                                num_heads=len(dilations), global_mask=global_mask)
  assert bench_attention.pattern_pairs(length, window, dilations, global_positions,
                                       causal=causal) == int(np.sum(mask))


@pytest.mark.parametrize("dilations", [(), (1, 3, 3, 3)])
def test_every_registry_variant_is_a_row_counted_by_its_pattern(dilations):
  setup = bench_attention.Setup(window=3, heads=4, head_dim=8, batch=1, dtype="float32",
                                dilations=dilations)
  assert bench_attention.row_names() == [*attention.variants(),
                                         bench_attention.BANDED_BASELINE]
  length = 23
  for name, (mechanism, preset) in attention.variants().items():
    config = attention.variant_config(name, num_heads=4, window=3, max_global=1)
    if preset and dilations:
      config["dilation"] = dilations
    global_mask = np.zeros((1, length), bool)
    global_mask[0, 0] = True
    pattern = attention.build(config, 4).pattern(length, global_mask=global_mask)
    row = bench_attention.measured(name, setup)
    assert row.count_pairs(length) == int(np.sum(pattern)), name
    assert row.inputs == (6 if mechanism.uses_global else 3)
    assert row.quadratic == mechanism.quadratic


def test_tiny_run_writes_every_output(tmp_path):
  out = tmp_path / "bench"
  completed = run_bench(
      "--lengths=64,128", "--window=8", "--heads=2", "--head_dim=8", "--repeats=1",
      "--mechanisms=local,longformer,full,jax_nn_banded", "--full_max_length=64",
      "--matmul_size=64",
      f"--out={out}")
  assert completed.returncode == 0, completed.stderr
  assert "[1/8] local length 64" in completed.stdout
  assert "| mechanism | length |" in completed.stdout

  with open(out / "bench.csv") as f:
    reader = csv.DictReader(f)
    assert tuple(reader.fieldnames) == bench_attention.CSV_COLUMNS
    rows = list(reader)
  assert [(r["mechanism"], int(r["length"])) for r in rows] == [
      ("local", 64), ("longformer", 64), ("full", 64), ("jax_nn_banded", 64),
      ("local", 128), ("longformer", 128), ("full", 128), ("jax_nn_banded", 128)]
  for row in rows[:6]:
    assert row["status"] == "ok", row
    for key in ("median_s", "useful_gflops", "pct_of_matmul", "setup_rss_gb", "peak_rss_gb"):
      assert float(row[key]) > 0, (key, row)
    assert float(row["peak_rss_gb"]) >= float(row["setup_rss_gb"])
  for row in rows[6:]:  # both quadratic
    assert row["status"].startswith("skipped: length > --full_max_length"), row
  assert "time(local, 128) / time(local, 64)" in completed.stdout
  assert "time(jax_nn_banded, 64) / time(local, 64)" in completed.stdout

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
