"""The sequence-parallel benchmark: its HLO byte count, and a tiny run end to end."""

import json

import pytest

from experiments.bench import harness
from experiments.bench import sequence_parallel as bench_sequence_parallel
from tests import entry_points

SETUP = harness.Setup(window=16, heads=2, head_dim=8, batch=1, dtype="float32")


def test_received_bytes_are_the_halos_whatever_the_length():
  """On the 4 simulated devices of the suite: the compiled step receives the halo formula's
  bytes, at two lengths alike."""
  received = []
  for length in (1024, 4096):
    record = bench_sequence_parallel.compile_step(4, length, 2, SETUP)[2]
    assert {c.split(" ")[0] for c in record["collectives"]} == {"collective-permute"}
    received.append(record["device_received_bytes"])
  assert received == [bench_sequence_parallel.halo_bytes(16, 2, 8, 4)] * 2


@pytest.mark.slow
def test_tiny_run_writes_tables_and_json(tmp_path):
  completed = entry_points.run_module(
      "bench.sequence_parallel", f"--out={tmp_path}", "--length=2048", "--window=16",
      "--heads=2", "--head_dim=8", "--sequence_devices=1,2", "--repeats=1", "--warmup=1",
      "--device_memory_gb=0.002", "--max_search_length=16384", "--big_length=4096",
      "--check_length=1024", timeout=600)
  assert completed.returncode == 0, completed.stderr
  results = json.load(open(tmp_path / "sequence_parallel.json"))
  assert [r["status"] for r in results["fixed"] + results["search"]] == ["ok"] * 4
  assert all(c["max_abs_error"] < 1e-4 for c in results["big"]["run"]["checks"])
  tables = (tmp_path / "sequence_parallel_tables.md").read_text()
  assert "## Fixed total length 2048" in tables and "## One step at total length 4096" in tables
