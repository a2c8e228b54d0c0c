"""The attention benchmark end to end at tiny sizes, and its flag errors."""

import csv

from PIL import Image
import pytest

from experiments.bench import attention as bench_attention
from tests import entry_points


def run_bench(*args):
  # Compiled as the suite compiles (tests/conftest.py): most XLA optimizations off.
  return entry_points.run_module("bench.attention", *args, timeout=300,
                                 JAX_DISABLE_MOST_OPTIMIZATIONS="1")


def test_tiny_run_writes_every_output(tmp_path):
  out = tmp_path / "bench"
  completed = run_bench(
      "--lengths=64,128", "--window=8", "--heads=2", "--head_dim=8", "--repeats=1",
      "--mechanisms=local,longformer,full,jax_nn_banded,cudnn_causal_window",
      "--full_max_length=64",
      "--matmul_size=64",
      f"--out={out}")
  assert completed.returncode == 0, completed.stderr
  assert "[1/10] local length 64" in completed.stdout
  assert "| mechanism | length |" in completed.stdout

  with open(out / "bench.csv") as f:
    reader = csv.DictReader(f)
    assert tuple(reader.fieldnames) == bench_attention.CSV_COLUMNS
    rows = list(reader)
  names = ["local", "longformer", "full", "jax_nn_banded", "cudnn_causal_window"]
  assert [(r["mechanism"], int(r["length"])) for r in rows] == [
      (name, length) for length in (64, 128) for name in names]
  for row in rows[:4] + rows[5:7]:
    assert row["status"] == "ok", row
    for key in ("median_s", "useful_gflops", "pct_of_matmul", "setup_rss_gb", "peak_rss_gb"):
      assert float(row[key]) > 0, (key, row)
    assert float(row["peak_rss_gb"]) >= float(row["setup_rss_gb"])
  for row in rows[7:9]:  # both quadratic
    assert row["status"].startswith("skipped: length > --full_max_length"), row
  assert rows[4]["status"] == rows[9]["status"] == "skipped: needs a GPU"
  assert "time(local, 128) / time(local, 64)" in completed.stdout
  assert "time(jax_nn_banded, 64) / time(local, 64)" in completed.stdout

  markdown = (out / "bench.md").read_text()
  assert "Machine:" in markdown and "GFLOP/s" in markdown
  assert markdown.count("| longformer |") == 2
  for name in ("bench.json", "bench.png"):
    assert (out / name).exists(), name
  with Image.open(out / "bench.png") as image:
    image.verify()


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
