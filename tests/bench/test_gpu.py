"""The accelerator benchmark on the CPU (interpret-mode kernels, tiny sizes): the rows and
train steps it writes, the rows it cannot run here, its time budget, its launch sweep and
the table it writes, its summary, and its flag errors."""

import csv
import json
import os

import pytest

from experiments.bench import gpu
from lra.attention.kernels import launch
from tests import entry_points

TINY = ("--allow_cpu", "--window=4", "--heads=2", "--head_dim=8", "--repeats=2", "--warmup=1",
        "--matmul_size=64")


def run_gpu(*args, timeout=300):
  # Compiled as the suite compiles (tests/conftest.py): most XLA optimizations off.
  return entry_points.run_module("bench.gpu", *TINY, *args, timeout=timeout,
                                 JAX_DISABLE_MOST_OPTIMIZATIONS="1")


def _csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_tiny_run_writes_every_row_and_train_step(tmp_path):
  result = run_gpu(
      "--lengths=64", "--methods=local_causal_pallas,local_xla,cudnn_causal_window",
      "--peer_shape=2x32x2x8", "--peer_windows=3",
      "--peer_methods=local_causal_xla,flex_causal_window,tokamax_causal",
      "--task_shapes=pathfinder:2x32x2x8", "--models=listops", "--model_size=tiny",
      "--model_implementations=xla", f"--out={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  rows = _csv(tmp_path / "bench.csv")
  assert [(r["group"], r["method"], r["length"]) for r in rows] == [
      ("peer", "local_causal_xla", "32"), ("peer", "flex_causal_window", "32"),
      ("peer", "tokamax_causal", "32"), ("length", "local_causal_pallas", "64"),
      ("length", "local_xla", "64"), ("length", "cudnn_causal_window", "64"),
      ("pathfinder", "local_xla", "32")]
  assert {r["window"] for r in rows if r["group"] == "peer"} == {"3"}
  assert {r["window"] for r in rows if r["group"] != "peer"} == {"4"}
  status = {(r["group"], r["method"]): r["status"] for r in rows}
  assert status["peer", "flex_causal_window"] == "skipped: needs a GPU"
  assert status["peer", "tokamax_causal"] == "skipped: needs a GPU"
  assert status["length", "cudnn_causal_window"] == "skipped: needs a GPU"
  for row in rows:
    if row["status"] == "ok":
      assert row["timer"] == "host, queued"
      assert float(row["device_s"]) > 0 and float(row["host_s"]) > 0, row
      assert float(row["useful_tflops"]) > 0 and float(row["pct_of_matmul"]) > 0, row
  assert sum(r["status"] == "ok" for r in rows) == 4

  (step,) = _csv(tmp_path / "train_steps.csv")
  assert (step["task"], step["implementation"], step["attention"], step["status"]) == (
      "listops", "xla", "longformer", "ok")
  assert (step["batch"], step["length"]) == ("8", "128") and float(step["device_s"]) > 0
  record = json.loads((tmp_path / "bench.json").read_text())
  assert record["machine"]["timer"] == "host, queued" and record["machine"]["matmul_tflops"] > 0
  markdown = (tmp_path / "bench.md").read_text()
  for heading in ("## The peers' shape", "## Against length", "## Task shape: pathfinder",
                  "## Train steps of the task configs", "## Summary"):
    assert heading in markdown, heading
  assert "local_causal_pallas, % of the measured matmul rate" in result.stdout
  assert os.path.getsize(tmp_path / "bench.png") > 0


@pytest.mark.parametrize("task", ["listops", "enwik8"])
def test_a_train_step_runs_on_the_implementation_asked_for(task):
  """The LRA configs name their attention's implementation; the char-LM ones gain it."""
  for implementation in ("pallas", "xla"):
    config = gpu.train_config(task, implementation, size="tiny")
    assert config.attention.implementation == implementation
    assert config.size == "tiny"


def test_rows_past_the_time_budget_are_written_as_skipped(tmp_path):
  result = run_gpu("--lengths=64", "--methods=local_xla", "--peer_windows=",
                   "--task_shapes=", "--models=listops", "--time_budget_s=0",
                   f"--out={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  rows = _csv(tmp_path / "bench.csv") + _csv(tmp_path / "train_steps.csv")
  assert [r.get("method") or r["implementation"] for r in rows] == ["local_xla", "pallas", "xla"]
  assert {r["status"] for r in rows} == {"skipped: past --time_budget_s=0"}


def test_launch_sweep_writes_the_entry_of_this_device(tmp_path):
  table = tmp_path / "gpu_launch.json"
  gpu.write_launch_table(str(table), {
      "default": {k: {"num_warps": 4, "num_stages": 2} for k in launch.KERNELS},
      "Some GPU": {"forward": {"num_warps": 2, "num_stages": 1}}})
  result = run_gpu("--sweep_launch", "--methods=local_causal_pallas", "--sweep_length=64",
                   "--launch_candidates=8:3", f"--launch_table={table}", f"--out={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  written = json.loads(table.read_text())
  # No GPU here: the entry of `launch.device_kind()` is the default one.
  assert written == {"default": {k: {"num_warps": 8, "num_stages": 3} for k in launch.KERNELS},
                     "Some GPU": {"forward": {"num_warps": 2, "num_stages": 1}}}
  (row,) = _csv(tmp_path / "launch_sweep.csv")
  assert (row["candidate"], row["method"], row["status"], row["attributed_by"]) == (
      "8:3", "local_causal_pallas", "ok", "step")
  assert "Chosen (the fastest of each kernel" in (tmp_path / "launch_sweep.md").read_text()


def test_the_fastest_candidate_of_each_kernel_is_chosen():
  def record(candidate, method, forward, d_query, d_key_value, status="ok"):
    return {"candidate": candidate, "method": method, "status": status, "forward_s": forward,
            "d_query_s": d_query, "d_key_value_s": d_key_value}

  methods = ("local_pallas", "local_causal_pallas")
  records = [record("4:2", "local_pallas", 1.0, 5.0, 9.0),
             record("4:2", "local_causal_pallas", 1.0, 5.0, 9.0),
             record("8:3", "local_pallas", 2.0, 1.0, 9.0),
             record("8:3", "local_causal_pallas", 2.0, 1.0, 1.0),
             # The least d_key_value time, but it did not run every method.
             record("8:4", "local_pallas", 3.0, 3.0, 0.1),
             record("8:4", "local_causal_pallas", 0, 0, 0, status="failed: out of memory")]
  assert gpu.fastest_launch(records, methods) == {
      "forward": launch.Settings(4, 2), "d_query": launch.Settings(8, 3),
      "d_key_value": launch.Settings(8, 3)}
  assert gpu.fastest_launch(records[-1:], methods) is None


def test_each_kernel_is_timed_by_its_cupti_name_or_else_by_the_step():
  measured = {"device_s": 5.0, "kernel_s": {"band_attention_forward_1": 1.0,
                                            "band_attention_d_query": 2.0, "fusion.3": 0.5}}
  assert gpu.kernel_seconds(measured, "forward") == (1.0, "kernel")
  assert gpu.kernel_seconds(measured, "d_key_value") == (5.0, "step")
  assert gpu.kernel_seconds({"device_s": 5.0, "kernel_s": None}, "forward") == (5.0, "step")


def test_the_launch_table_reads_back_as_the_kernels_read_it(tmp_path):
  path = tmp_path / "table.json"
  best = {k: launch.Settings(8, 4) for k in launch.KERNELS}
  with open(launch.TABLE) as f:
    gpu.write_launch_table(str(path), gpu.updated_launch_table(json.load(f), "NVIDIA X", best))
  with open(launch.TABLE) as f:
    assert path.read_text() == f.read()[:-3] + ''',
  "NVIDIA X": {
    "forward": {"num_warps": 8, "num_stages": 4},
    "d_query": {"num_warps": 8, "num_stages": 4},
    "d_key_value": {"num_warps": 8, "num_stages": 4}
  }
}
'''


def test_summary_ratios():
  def row(method, length, device_s, group="length", pct=None):
    return {"group": group, "method": method, "batch": 4, "length": length, "heads": 16,
            "head_dim": 64, "window": 512, "status": "ok", "device_s": device_s,
            "pct_of_matmul": pct}

  rows = [row("local_causal_pallas", 4096, 1.0, pct=12.5),
          row("cudnn_causal_window", 4096, 1.5),
          row("local_causal_pallas", 16384, 2.0, group="peer"),
          row("flex_causal_window", 16384, 3.0, group="peer"),
          row("cudnn_causal_window", 16384, 2.0, group="peer"),
          {"group": "length", "method": "tokamax_causal", "length": 4096, "status": "skipped"}]
  steps = [{"task": "text", "implementation": "xla", "xla_over_pallas": 4.25}]
  assert gpu.ratio_lines(rows, steps, 700.0) == [
      "time(cudnn_causal_window) / time(local_causal_pallas): 4096 1.50, "
      "4x16384x16x64 w=512 1.00",
      "time(flex_causal_window) / time(local_causal_pallas): 4x16384x16x64 w=512 1.50",
      "train step, time(xla) / time(pallas): text 4.25",
      "local_causal_pallas, % of the measured matmul rate (700.0 TFLOP/s): 4096 12.5"]


@pytest.mark.parametrize("args,message", [
    (("--launch_candidates=8",), "num_warps:num_stages"),
    (("--peer_shape=4x16384x16",), "batch x length x heads x head_dim"),
    (("--sweep_launch",), "--launch_table=PATH"),
])
def test_bad_input_ends_in_one_line(tmp_path, args, message):
  result = run_gpu(*args, f"--out={tmp_path}", timeout=120)
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines


def test_no_accelerator_names_the_fix(tmp_path):
  result = entry_points.run_module("bench.gpu", f"--out={tmp_path}", timeout=120)
  assert result.returncode == 2
  assert "no GPU or TPU here" in result.stderr and "--allow_cpu" in result.stderr
  assert "Traceback" not in result.stderr
