"""The accelerator benchmark's command on the CPU (interpret-mode kernels, tiny sizes): the
rows it writes, the rows it cannot run here, its launch-settings mode, and its flag errors."""

import csv
import os

from tests import entry_points

TINY = ("--allow_cpu", "--lengths=64", "--window=4", "--heads=2", "--head_dim=8",
        "--repeats=1", "--warmup=1", "--matmul_size=64", "--models=false")


def _rows(path):
  with open(path) as f:
    return {row["method"]: row for row in csv.DictReader(f)}


def test_comparison_rows_and_skips(tmp_path):
  result = entry_points.run_module(
      "bench_gpu", *TINY, "--methods=local_pallas,causal_pallas,cudnn_full",
      "--task_shapes=pathfinder:2x64x2x8", f"--out={tmp_path}", timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  for suffix in ("md", "csv", "json", "png"):
    assert os.path.exists(tmp_path / f"bench.{suffix}")
  with open(tmp_path / "bench.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["method"], r["shape"]) for r in rows] == [
      ("local_pallas", "64"), ("causal_pallas", "64"), ("cudnn_full", "64"),
      ("local_pallas", "pathfinder 64")]
  assert rows[0]["status"] == "ok" and float(rows[0]["median_s"]) > 0
  assert rows[2]["status"] == "skipped: needs a GPU"


def test_kernel_configs(tmp_path):
  result = entry_points.run_module("bench_gpu", *TINY, "--kernel_configs=16:4:2,256:8:3",
                                   f"--out={tmp_path}", timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = _rows(tmp_path / "kernel_configs.csv")
  # bfloat16 at head_dim 8 runs in blocks of at most 128 (`kernels.gpu_block`).
  assert set(rows) == {"local_pallas 16:4:2", "causal_pallas 16:4:2",
                       "local_pallas 256:8:3 (runs in blocks of 128)",
                       "causal_pallas 256:8:3 (runs in blocks of 128)"}
  assert all(row["status"] == "ok" for row in rows.values())
  assert not os.path.exists(tmp_path / "bench.csv")


def test_bad_kernel_config_and_no_accelerator(tmp_path):
  result = entry_points.run_module("bench_gpu", *TINY, "--kernel_configs=128:8",
                                   f"--out={tmp_path}", timeout=120)
  assert result.returncode != 0
  assert "block:num_warps:num_stages" in result.stderr
  result = entry_points.run_module("bench_gpu", f"--out={tmp_path}", timeout=120)
  assert result.returncode != 0
  assert "no GPU or TPU here" in result.stderr and "--allow_cpu" in result.stderr
  assert "Traceback" not in result.stderr
